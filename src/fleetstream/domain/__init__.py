"""The pure core: records and stateful stream logic, standard library (and numpy) only.

Nothing here does I/O, imports asyncio or reads the wall clock directly: time
arrives through a :class:`~fleetstream.domain.clock.Clock`, so the same objects
run in the embedded engine, in a cluster worker and in a unit test.

numpy is the one import beyond the standard library, on purpose: processors
work on whole columns of a batch (running aggregates of many series in one
vectorised step), which per-reading Python objects cannot match in speed. It is
pure arithmetic, with no I/O and no state outside the objects that use it.
"""
