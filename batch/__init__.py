"""Batch mode: whole folders offline (``pediface deface INPUT OUTPUT``).

What a research coordinator has on a disk, in one command: a NIfTI or MGZ file, a folder of them
(the paper's tool's ``input/`` layout), DICOM series, studies and patients in any depth of folders,
a DICOMDIR, or a BIDS dataset. :mod:`batch.discover` turns the input into typed items,
:mod:`batch.process` defaces one item with the worker's pipeline, :mod:`batch.outputs` names and
places what is written, and :mod:`batch.run` runs the items in parallel processes, resumably, with
a report.

The layer sits above the worker (it reuses its pipeline) and below training and the CLI; the
gateway never imports it.
"""
