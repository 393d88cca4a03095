"""Training the fusion networks and calibrating them on one experiment.

- :mod:`.data` -- training samples drawn from full-rate sequences with the paper's recipe;
- :mod:`.train` -- resumable, deterministic training (:func:`train`);
- :mod:`.calibrate` -- fine-tuning on a recording's own keyframes (:func:`calibrate`).

Imported on demand (``from napari_xfusion.training.train import train``): nothing here is
needed to fuse.
"""
