"""pydicom without value validation: its messages quote header values (patient data).

pydicom checks each value it converts and, for one that does not fit its VR, warns
and logs a message that quotes the value ("Invalid value for VR AS: 'Q8Y'"): a
patient's name or ID would land in whatever collects the application's logs. Every
dicomlake entry point that makes pydicom convert values runs under :func:`quiet`;
what was odd about a value is reported in the row's ``warnings``, by tag, not value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pydicom import config

P = ParamSpec("P")
R = TypeVar("R")


def quiet(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with pydicom's reading and writing validation off."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with config.disable_value_validation():
            return function(*args, **kwargs)

    return wrapper
