"""DVC stage `refiner_train`: parameters from params.yaml, the work in tsloc.pipeline.refiner_train.run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this tree's code, also in a queued copy
from tsloc.guard import stage_main  # noqa: E402
from tsloc.pipeline.refiner_train import run  # noqa: E402

sys.exit(stage_main("refiner_train", run))
