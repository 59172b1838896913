"""The tools in scripts/ that compare results."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_results_reads_old_files_with_the_old_meaning_of_collision_rate():
    same = _load("same_results")
    now = {"format": 2, "default": {"numbers": {"collision_rate": 0.08, "rows_sharing_codes": 0.15},
                                    "tables": {"codes": "ab"}, "wall_s": 1.0}}
    # A file from before the redefinition: its "collision_rate" is today's rows_sharing_codes.
    old = {"default": {"numbers": {"collision_rate": 0.15}, "tables": {"codes": "ab"}, "wall_s": 1.0}}
    differ, lines = same.compare(old, now)
    assert not differ and "default: collision_rate: new number 0.08" in lines and lines[-1] == "SAME"
    differ, lines = same.compare({"format": 2, **now}, {**now, "default": dict(now["default"], numbers={
        "collision_rate": 0.09, "rows_sharing_codes": 0.15})})
    assert differ and "default: collision_rate: 0.08 -> 0.09" in lines
