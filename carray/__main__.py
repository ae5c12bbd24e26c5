import sys

from .cli import main
from .console import filter_ray_notices

filter_ray_notices()  # Ray's C++ notices about itself stay in Ray's logs (carray/console.py)
sys.exit(main())
