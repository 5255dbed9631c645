import sys
from pathlib import Path

# The examples are scripts run from their own folders, not packages; the tests import them as such.
EXAMPLES = Path(__file__).resolve().parent.parent
for folder in (EXAMPLES / "counter", EXAMPLES / "hello-p2p", EXAMPLES / "redis", EXAMPLES / "tests"):
    sys.path.insert(0, str(folder))
