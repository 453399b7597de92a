"""Evaluation of face maskers: is the face gone, are the ears gone, is the brain untouched?

For each head the masker under test is run as the worker runs it (``predict``; for DICOM
series the whole pipeline, :func:`worker.pipeline.deface_series`, and the defaced,
de-identified instances read back), and the result is judged by four measures:

* **Face removal, automatically.** The head surface is rendered (:func:`worker.render.render_surface`:
  ray casting to the first voxel above the head threshold, Lambert shading from the
  depth map's normals, 1 mm pixels) from the front and 45 degrees to either side, before
  and after defacing, and OpenCV's Haar cascades (their XML files ship inside the
  ``opencv-python-headless`` wheel; nothing is downloaded) look for a face
  (:mod:`evaluation.detector`). A view whose *before* render has no
  detected face is "not detectable" and counts neither way.
* **Ears:** the share of the teacher's ear label (``training/teacher.py``) that is blanked.
* **Brain preserved:** voxels changed inside the teacher's registered atlas brain; must be 0.
* **Negative controls:** the share of a skull-stripped brain's non-zero voxels lost.

Synthetic paediatric heads come from :func:`training.synth.synthesize`, with
child-sized scales and seeds no training run uses, made from a held-out head's label map,
and are reported per contrast; :mod:`evaluation.age_bands` makes them per age band, newborn
to adult, carrying the atlas brain so that brain voxels are counted on them too.

``pediface evaluate`` runs this and prints the table; ``docs/defacing.md`` holds a run.
Imports of torch and nnU-Net happen only in the maskers; OpenCV is imported when a
detector is built.

Nothing on the serving path imports this package: it sits above the worker, beside training.
"""
