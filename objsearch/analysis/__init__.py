"""Analysis jobs: ``analyze`` a folder into a new index, ``add`` files to it, ``remove`` them, ``sync`` it with its
folder, ``compact`` it. Every job streams: images are decoded by a pool of workers, detected in batches, journaled
and committed to the index in small transactions, so memory stays O(commit interval), not O(dataset).

Crash safety has two layers:

* the **analysis journal** (``INDEX.h5.journal``): each finished image is appended as one CRC-framed record and
  flushed before the next one starts, so a job killed at any moment (even ``kill -9``) loses at most the image in
  flight; the next job on the same index applies the journaled images first, then does the rest. Records carry a
  sequence number and the journal a random id; the index remembers the last record it applied (attribute
  ``journal``), so a record is never applied twice.
* the **index transactions** (``objsearch.catalog``): every ``commit`` reaches the file completely or not at all
  (a rollback journal, as SQLite's).

So a killed job leaves an index that opens and holds the state of its last commit, plus a journal of the images
finished since; re-running the same command finishes the work, and gives the same object ids, boxes and vectors as
an uninterrupted run (images are always processed in sorted path order and ids are handed out in that order).

The package, from the top down:

* ``jobs``: the jobs themselves (imported here: ``from objsearch.analysis import analyze, sync, ...``);
* ``backfill``: the projections fitted at the end of an analysis, and what ``sync`` adds to an older index;
* ``runner``: ``JobRun``, one job's pass over its files (detect, journal, commit), and what jobs share;
* ``pipeline``: the pass over a job's files, pipelined: decoding and thumbnails in a pool of workers, batches
  grouped by letterbox shape in a reorder window, records handed back in path order;
* ``journal``: the journal file and its record format (shared with the Ray shards of ``objsearch.distributed``).

The detector and settings an index was built with are found by ``objsearch.provenance``, below this package.
"""

from objsearch.analysis.jobs import add, analyze, compact, remove, sync, trust
from objsearch.analysis.runner import JobCancelled, JobSummary, ProgressFn

__all__ = ["JobCancelled", "JobSummary", "ProgressFn", "add", "analyze", "compact", "remove", "sync", "trust"]
