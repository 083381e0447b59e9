"""Which ggml CPU back-ends the local server tries, and in what order."""

import pytest

from verity.backends.llama_server import cpu_backend_plan
from verity.core.errors import ConfigError

pytestmark = pytest.mark.unit

# ggml's scores on an AVX-512 machine without AMX or AVX-VNNI (0: the CPU lacks them).
SCORES = {"x64": 1, "sse42": 5, "haswell": 61, "skylakex": 189, "zen4": 1981,
          "alderlake": 0, "sapphirerapids": 0}


def test_auto_is_the_best_variant_then_the_best_portable_one() -> None:
    assert cpu_backend_plan("auto", scores=SCORES) == ["zen4", "haswell"]


def test_auto_on_a_cpu_without_avx512_tries_the_portable_one_once() -> None:
    scores = {"x64": 1, "sse42": 5, "haswell": 61, "skylakex": 0, "zen4": 0}
    assert cpu_backend_plan("auto", scores=scores) == ["haswell"]


def test_named_variants_are_tried_in_the_given_order_without_repeats() -> None:
    assert cpu_backend_plan("skylakex, haswell,auto", scores=SCORES) == [
        "skylakex", "haswell", "zen4"]


def test_a_named_variant_is_tried_even_where_ggml_scores_it_zero() -> None:
    # ggml refuses it when loading; the server then falls back to the next one.
    assert cpu_backend_plan("sapphirerapids,haswell", scores=SCORES) == [
        "sapphirerapids", "haswell"]


def test_a_variant_that_is_not_installed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'icelake'.*auto or one of alderlake"):
        cpu_backend_plan("icelake", scores=SCORES)


def test_a_build_without_variants_names_no_choice_but_a_rebuild() -> None:
    with pytest.raises(ConfigError, match="make install"):
        cpu_backend_plan("zen4", scores={})
    assert cpu_backend_plan("auto", scores={}) == []
