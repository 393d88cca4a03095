"""The napari side: reader, writer, sample data, the fusion dock and the plot docks.

Everything that imports napari or Qt lives here; the manifest (``napari.yaml``) points into
this package. :mod:`.jobs` plans and runs the long work without Qt; the docks are views
over it.
"""
