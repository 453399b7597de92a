"""From the instances of a series to geometrically consistent stacks and volumes.

A series as a scanner sends it is not always one 3D stack. :func:`worker.volume.stacks.split_series`
first sets aside, deliberately and with a reason, the objects that are not part
of any volume (non-image objects such as Raw Data or presentation states,
localizers / scouts, derived reformats), then groups every remaining frame into
stacks:

* by orientation, frame size and pixel spacing;
* by echo, temporal position, b-value (and Enhanced MR stack ID);
* a Siemens mosaic instance is a stack of its own: each tile is a slice placed
  with the geometry documented for mosaics (tile grid ``ceil(sqrt(N))``,
  Image Position of the whole mosaic moved by half the size difference between
  mosaic and tile, slices stepping along the CSA ``SliceNormalVector`` by the
  slice spacing);
* positions repeated within a group are separated by Acquisition Number when
  that resolves them, otherwise by order of acquisition (GE writes the time
  points of an fMRI run as repeated positions in one series).

Each stack is then checked: slices in a line along the slice normal (gantry
tilt is refused), regular spacing (missing slices are named with their count,
non-uniform spacing is refused). Anything inconsistent raises an
:class:`InputError` that says why, without header values that could identify
anyone; the worker quarantines the series.

A volume (:func:`worker.volume.pixels.stack_volume`) holds the stored values of one stack in LPS
geometry, and every z-slice remembers the instance, frame and (for mosaics)
tile it came from, so that a mask maps back to the original pixels.

Modules in the order a series goes through them: :mod:`~worker.volume.read` (instances, and what is
set aside), :mod:`~worker.volume.geometry` (frames and mosaic tiles in patient space),
:mod:`~worker.volume.stacks` (grouping and checks), :mod:`~worker.volume.pixels` (volumes).
"""
