"""pytest configuration for the ncml Python module tests (run by ctest as python.pytest).

The module is found through PYTHONPATH (the build's python/ directory); ctest sets it, as
well as NCML_PY_REFERENCE (the C++ cross-check program) and NCML_DATA_DIR."""
import os

import numpy as np
import pytest

try:
    import ncml  # noqa: F401
except ImportError as e:  # pragma: no cover - a setup problem, not a test failure
    raise pytest.UsageError(
        f"cannot import ncml ({e}); build the project and set PYTHONPATH to the build's python/ "
        "directory, or run the tests through ctest -R python"
    )

from numpy_reference import clusters


@pytest.fixture
def data32():
    """Six float32 clusters in 10 dimensions, 25 rows each, int64 labels."""
    return clusters(seed=1, dtype=np.float32)


@pytest.fixture
def data64():
    return clusters(seed=2, dtype=np.float64)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def reference_program():
    path = os.environ.get("NCML_PY_REFERENCE")
    if not path or not os.path.exists(path):
        pytest.skip("NCML_PY_REFERENCE is not set (run through ctest to compare with the C++ program)")
    return path
