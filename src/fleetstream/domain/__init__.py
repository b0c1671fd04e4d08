"""The pure core: records and stateful stream logic, standard library only.

Nothing here does I/O, imports asyncio or reads the wall clock directly: time
arrives through a :class:`~fleetstream.domain.clock.Clock`, so the same objects
run in the embedded engine, in a cluster worker and in a unit test.
"""
