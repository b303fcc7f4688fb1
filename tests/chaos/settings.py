"""The chaos stack's settings (tests/chaos/stack.py): the test settings, plus the chaos load's recorded
algorithms (tests/chaos/runs.py), so web and workers both know them."""
from tests.settings import *  # noqa: F401,F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.chaos.runs.RecordedRunsConfig"]
