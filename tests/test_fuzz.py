"""Fuzzing recipe loading through the real CLI with hypothesis (a few hundred examples here; thousands in
`benchmarks/fuzz_recipes.py`)."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from fuzz_recipes import check_recipe, recipe_bytes


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipe_bytes())
@example(b'[checkpoint]\n"\'" = 0')  # a key that is a quote: the error names it 'checkpoint.''
def test_any_recipe_file_loads_or_fails_with_one_line_and_exit_2(content):
    with tempfile.TemporaryDirectory() as tmp:
        check_recipe(Path(tmp), content)
