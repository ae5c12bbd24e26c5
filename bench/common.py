"""What the bench scripts share: where the bundled images are."""
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[1] / "tests" / "data"
LIVE1_GRAY = BUNDLED / "LIVE1_gray"
