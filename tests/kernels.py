"""Run every kernel test against both the compiled kernel (id ``c``) and its twin (id ``py``)."""
import pytest

from stalwart._fast import load


def kernel_fixture(name: str):
    """A fixture yielding kernel module ``name``, once compiled and once the pure-Python twin.

    ``load(name, compiled=True)`` raises when the extension was not built, so the ``c`` case can
    never silently test the twin.
    """

    @pytest.fixture(params=["py", "c"], name=name)
    def _kernel(request):
        return load(name, compiled=request.param == "c")

    return _kernel
