"""Helpers behind ``paper/reproduce_mnist.py`` and ``paper/reproduce_colour.py``.

One idea per module:

* ``plan``        which runs exist in a reproduction, their folder names and queue order
* ``status``      what is already on disk for a run (epochs trained, being trained elsewhere)
* ``commands``    the exact qgen-* command lines of each step (pure, so --dry-run prints them)
* ``execute``     running the steps of the queue in lanes, with progress
* ``records``     the per-run evaluation record (eval.json) that the reports are built from
* ``sizes``       generator bytes as packed on disk against fp32
* ``fp32_images`` the few reconstructions of 32-bit checkpoints that Figure 4 needs
* ``paper``       the numbers the paper (and the SDLSS authors) report, for comparison
* ``provenance``  command, machine and date stamped on every table
* ``tables``      markdown tables and the measured-vs-paper comparison text
* ``plots``       Figure 3 (PSNR/SSIM vs s), Figure 4 (reconstruction grid) and eval-curve
                  PNGs
* ``shipping``    copying the final packed models into models/ (and their README rows)
* ``snapshot``    checked copies of the checkpoints of runs another process is training
* ``snapshot_scoring`` ``reproduce_colour.py --snapshots``: snapshot, score, report
* ``row_report``  one data set's Table-1 row side by side with the paper's, partial runs
                  marked, with the issue's aims and the trainer-vs-engine check
* ``options``     command-line options shared by both scripts

The scripts only drive the installed ``qgen-*`` command-line tools and read the files they write;
quantized models are scored through the packed engine (qgen-export, qgen-measure,
qgen-reconstruct), 32-bit ones with qgen-eval because a 32-bit model has no packed form.
"""
