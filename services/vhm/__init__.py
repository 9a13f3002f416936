"""vhm: the hypervisor service module (ACRN hypervisor + Service-VM VHM in one process).

Sans-I/O core: routing.py (CONF1 latch, ranges, BDFs, fallback), guest_memory.py (RAM, EPT), vm.py (one VM),
core.py (VM table, clients, the ioreq path, VM lifecycle), mpt.py (MPT services), outcomes.py (what the core
returns). Shell: service.py (asyncio/zmq), main.py (``gvtsim vhm``). See docs/VHM.md.
"""
