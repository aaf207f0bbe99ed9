"""Test settings: the real settings module with a throwaway key when none is given."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "insecure-test-key-not-for-production")

from project.settings import *  # noqa: F403
