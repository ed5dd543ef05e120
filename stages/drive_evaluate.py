"""DVC stage `drive_evaluate`: parameters from params.yaml, the work in tsloc.pipeline.drive_evaluate.run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this tree's code, also in a queued copy
from tsloc.guard import stage_main  # noqa: E402
from tsloc.pipeline.drive_evaluate import run  # noqa: E402

sys.exit(stage_main("drive_evaluate", run))
