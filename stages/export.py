"""DVC stage `export`: parameters from params.yaml, the work in tsloc.pipeline.export.run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this tree's code, also in a queued copy
from tsloc.cli import main  # noqa: E402

sys.exit(main(["export"]))
