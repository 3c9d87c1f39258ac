"""Whether the SDK runs inside a componentize-py component."""

import importlib.util

# `componentize_py_runtime` is built into the CPython that componentize-py
# embeds in every component (and available at build-time pre-initialisation);
# it does not exist on a plain CPython.
IN_COMPONENT = importlib.util.find_spec("componentize_py_runtime") is not None
