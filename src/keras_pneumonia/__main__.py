"""``python -m keras_pneumonia``: the same as the ``keras-pneumonia`` command."""

import sys

from keras_pneumonia.cli import main

sys.exit(main())
