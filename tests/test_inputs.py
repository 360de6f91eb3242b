"""Input checks: dtype conversion said once, values outside clip refused with the fix."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fairdefense.errors import ConfigError
from fairdefense.inputs import check_dataset_inputs, check_inputs


def test_float32_in_range_passes_unchanged_and_silently():
    x = torch.rand(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = check_inputs(x, (0.0, 1.0))
    assert out.dtype == torch.float32 and torch.equal(out, x)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.uint8, np.bool_])
def test_lossless_dtypes_are_converted_and_said(dtype):
    x = np.array([[0, 1], [1, 0]], dtype=dtype)
    with pytest.warns(UserWarning, match=f"dtype {np.dtype(dtype).name if dtype is not np.bool_ else 'bool'}.*converted to float32"):
        out = check_inputs(x, (0.0, 1.0))
    assert out.dtype == torch.float32
    assert out.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_pixels_on_the_255_scale_are_refused_with_the_fix():
    x = np.array([[0, 255], [17, 3]], dtype=np.uint8)
    with pytest.raises(ConfigError, match=r"values in \[0, 255\], outside .*clip=\(0, 1\).*Divide 0\.\.255 pixels by 255"):
        check_inputs(x, (0.0, 1.0))


def test_negative_values_refused_and_unbounded_accepted():
    x = torch.tensor([-0.5, 0.5])
    with pytest.raises(ConfigError, match=r"values in \[-0.5, 0.5\]"):
        check_inputs(x, (0.0, 1.0))
    assert torch.equal(check_inputs(x, None), x)


def test_per_feature_clip():
    clip = (torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    check_inputs(torch.tensor([[0.5, -0.9]]), clip)
    with pytest.raises(ConfigError, match="per-feature"):
        check_inputs(torch.tensor([[-0.1, 0.0]]), clip)


def test_non_numeric_and_complex_refused():
    with pytest.raises(ConfigError, match="real numbers"):
        check_inputs(np.array(["a", "b"]), (0.0, 1.0))
    with pytest.raises(ConfigError, match="real numbers"):
        check_inputs(torch.zeros(2, dtype=torch.complex64), (0.0, 1.0))


def test_dataset_sample_is_checked():
    good = TensorDataset(torch.rand(1000, 2), torch.zeros(1000, dtype=torch.long))
    check_dataset_inputs(good, (0.0, 1.0))
    x = torch.rand(1000, 2)
    x[777, 1] = 200.0  # one bad sample far from the start must be found by the spread sample
    x[::4] *= 255
    bad = TensorDataset(x, torch.zeros(1000, dtype=torch.long))
    with pytest.raises(ConfigError, match="the training data has values in .*outside"):
        check_dataset_inputs(bad, (0.0, 1.0))
    ints = TensorDataset(torch.randint(0, 2, (10, 2)), torch.zeros(10, dtype=torch.long))
    with pytest.warns(UserWarning, match="int64.*converted to float32"):
        check_dataset_inputs(ints, (0.0, 1.0))
