"""tfps_ha: deploy TensorFlow ParameterServerStrategy training and keep it alive.

Importing this package sets `TF_USE_LEGACY_KERAS=1` when it is unset, because
Keras 3 does not support ParameterServerStrategy and TensorFlow reads the
variable only when it is first imported.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
