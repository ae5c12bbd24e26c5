"""The networks' names and the training options each one's constructor takes, without torch: the
options (carray/config.py) and `--help` read them here, so parsing a command line never imports
torch. carray/model.py builds its registry from the same table (tests/test_model.py checks both agree)."""

#: arch name -> TrainConfig fields its constructor takes, besides `channels`.
ARCH_OPTIONS = {
    "arcnn": ("residual", "relu_output", "padding_mode"),
    "fast-arcnn": ("residual", "padding_mode"),
    "unshuffled-cnn": ("blocks", "width", "padding_mode", "quality_input", "coding_input"),
}
