"""The settings of the workers of tests/queueing/test_e2e_shutdown_cleanup.py: the test settings, plus
that test's algorithms (tests/queueing/cleanup_algorithms.py)."""
from tests.settings import *  # noqa: F401,F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.queueing.cleanup_algorithms.CleanupAlgorithmsConfig"]
