"""Reads a run's TensorBoard event files with TensorBoard's own reader and prints what it
found as JSON: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, width, height], ...]}}.

Used by the integration tests (tests/tests/integration/observe.rs): a file TensorBoard
cannot read, or a record with a bad checksum, fails here as it would in TensorBoard.
"""
import json
import sys

from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer


def main(logdir):
    mux = EventMultiplexer(size_guidance={"scalars": 0, "images": 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    scalars, images = {}, {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            scalars.setdefault(tag, []).extend([e.step, e.value] for e in mux.Scalars(run, tag))
        for tag in tags.get("images", []):
            images.setdefault(tag, []).extend([e.step, e.width, e.height] for e in mux.Images(run, tag))
    json.dump({"scalars": scalars, "images": images}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
