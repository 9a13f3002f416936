"""vhm as a real process, with scripted guests and a scripted ioreq client speaking the wire protocol.

Covers the issue's acceptance: 1000 MMIO requests from 8 VMs x 2 vCPUs, pipelining across VMs, forged VM
ids, MSI delivery to the right guest only, a client killed with requests PROCESSING, a guest killed (VMs
destroyed, frames back), vGPU creation through the device model, bad input, clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from gvtsim.orchestration.health import probe
from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.client import RemoteError
from gvtsim.services.common.liveness import HeartbeatConfig
from support.procs import ServiceProc
from vhm_scripted import BAR0, IoreqError, ScriptedClient, ScriptedGuest

pytestmark = pytest.mark.service
HB = HeartbeatConfig(0.2, 3)
R, W, MMIO = IoreqDir.READ, IoreqDir.WRITE, IoreqType.MMIO
HERE = Path(__file__).parent


@pytest.fixture
def vhm() -> Iterator[ServiceProc]:
    mem_path = f"/dev/shm/gvtsim-test-vhm-{uuid.uuid4().hex[:12]}.mem"
    proc = ServiceProc(["vhm", "--bind", "tcp://127.0.0.1:*", "--mem-path", mem_path, "--mem-size-mb", "256",
                        "--heartbeat-ivl", "0.2", "--ioreq-timeout", "20", "--client-grace", "1"], name="vhm")
    try:
        proc.start()
        yield proc
        t0 = time.monotonic()
        code = proc.terminate(timeout=5)
        assert code == 0 and time.monotonic() - t0 < 2.0, f"vhm exit {code} after {time.monotonic() - t0:.2f}s"
    finally:
        proc.stop()
        if os.path.exists(mem_path):
            os.unlink(mem_path)
        shutil.rmtree(f"{mem_path}.vhm.state", ignore_errors=True)  # what a killed vhm leaves (docs/STATE.md)


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Start scripted peers (vhm_scripted.py) in their own processes. ``start`` blocks until the ready line:
    call it through ``asyncio.to_thread`` from a test that has live in-process peers."""
    procs: list[ServiceProc] = []

    def start(mode: str, endpoint: str, *argv: str) -> ServiceProc:
        p = ServiceProc([mode, "--connect", endpoint, *argv], name=f"scripted-{mode}", module="vhm_scripted",
                        env={"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])})
        procs.append(p)
        p.start()
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    c = zmq.asyncio.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
async def peers(ctx, vhm) -> AsyncIterator[Any]:
    """Make in-process scripted guests/clients connected to vhm; closed at the end."""
    made: list[Any] = []

    async def make(kind: str, name: str, **kw: Any) -> Any:
        peer = (ScriptedGuest if kind == "guest" else ScriptedClient)(ctx, vhm.endpoint, name, HB, **kw)
        made.append(peer)
        return await peer.start()

    yield make
    for p in made:
        await p.close()


async def status(vhm: ServiceProc) -> m.StatusReply:
    return await probe(vhm.endpoint, timeout=3)


async def wait_status(vhm: ServiceProc, pred: Any, timeout: float = 5.0) -> m.StatusReply:
    """Poll STATUS until ``pred(reply)`` (vhm has no event stream to wait on); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        st = await status(vhm)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s; last status {st.info} {st.counters}")
        await asyncio.sleep(0.05)


# ============================================================================================ throughput
async def test_1000_mmio_requests_from_8_vms_x_2_vcpus(vhm, peers):
    guests = [await peers("guest", f"guest{i}") for i in range(2)]
    client = await peers("client", "gvt")
    vms = []
    for i in range(8):
        g = guests[i % 2]
        created = await g.create_vm(f"vm{i}", vcpus=2, ram_mb=4)
        await client.claim_bar0(created.vm)
        vms.append((g, created.vm))
    total, per = 1000, [1000 // 16 + (1 if k < 1000 % 16 else 0) for k in range(16)]
    rng = random.Random(7)
    results: list[tuple[int, int]] = []

    async def vcpu_loop(g: ScriptedGuest, vm: int, vcpu: int, n: int) -> None:
        for _ in range(n):
            addr = BAR0 + rng.randrange(0, 1 << 22, 4)
            d = R if rng.random() < 0.75 else W
            fut = await g.start_ioreq(vm, vcpu, MMIO, d, addr, value=0x1234)
            seq = g._seq
            value = await asyncio.wait_for(fut, 10)
            results.append((value, (addr ^ seq) & 0xFFFF_FFFF if d == R else 0))

    t0 = time.perf_counter()
    await asyncio.gather(*(vcpu_loop(g, vm, vcpu, per[2 * k + vcpu]) for k, (g, vm) in enumerate(vms)
                           for vcpu in range(2)))
    elapsed = time.perf_counter() - t0
    assert len(results) == total
    assert all(got == want for got, want in results), [r for r in results if r[0] != r[1]][:5]
    st = await status(vhm)
    assert st.info["ioreqs"]["mmio"] == total and st.counters.get("ioreq_dispatched") == total
    assert client.received == total and sum(client.batches) == total
    print(f"\nvhm: {total} MMIO ioreqs, 8 VMs x 2 vCPUs, one outstanding per vCPU: {elapsed:.3f}s, "
          f"{total / elapsed:.0f} ioreq/s; {len(client.batches)} IOREQ_DISPATCH batches "
          f"(mean {total / len(client.batches):.2f}, max {max(client.batches)})")


async def test_dispatch_is_pipelined_across_vms_and_vcpus(vhm, peers):
    guest = await peers("guest", "guest")
    client = await peers("client", "gvt", hold=True)
    vms = [(await guest.create_vm(f"vm{i}", vcpus=2)).vm for i in range(4)]
    for vm in vms:
        await client.claim_bar0(vm)
    futs = [await guest.start_ioreq(vm, vcpu, MMIO, R, BAR0 + 8 * vcpu) for vm in vms for vcpu in range(2)]
    await client.until(lambda: client.received == 8)  # all 8 reach the client, none completed: not lock-step
    assert not any(f.done() for f in futs)
    held = client.held
    await client.conn.send(m.IoreqComplete(reqs=[m.IoreqResult(vm=r.vm, vcpu=r.vcpu, seq=r.seq, value=r.seq + 1)
                                                 for r in held]))
    async with asyncio.timeout(5):
        values = await asyncio.gather(*futs)
    by_key = {(r.vm, r.vcpu): r.seq + 1 for r in held}
    assert values == [by_key[(vm, vcpu)] for vm in vms for vcpu in range(2)]


# ============================================================================================ isolation
async def test_forged_vm_id_is_rejected_and_counted(vhm, peers):
    alice, mallory = await peers("guest", "alice"), await peers("guest", "mallory")
    vm = (await alice.create_vm("alice-vm")).vm
    with pytest.raises(IoreqError) as err:
        await mallory.ioreq(vm, 0, MMIO, R, BAR0)
    assert err.value.code == "forged_id"
    with pytest.raises(RemoteError) as err2:
        await mallory.conn.request(m.VmDestroy, vm=vm, timeout=5)
    assert err2.value.code == "forged_id"
    st = await status(vhm)
    # refused by the session layer's authorisation check (vm_creator rule), before the core saw them
    assert st.counters["authz_refused_owner_IOREQ"] == 1 and st.counters["authz_refused_owner_VM_DESTROY"] == 1
    assert st.counters["error_sent_forged_id"] == 2
    assert [v["vm"] for v in st.info["vms"]["list"]] == [vm]
    assert await alice.ioreq(vm, 0, MMIO, R, 0xFED0_0000, size=2) == 0xFFFF  # alice's VM is unaffected


async def test_ioreq_batch_entries_are_checked_one_by_one_and_answered_together(vhm, peers):
    """IOREQ_BATCH: each entry is an IOREQ of its own (a forged one is refused with its keys, the others go
    through); the completions come back together in one IOREQ_DONE_BATCH, and every later answer to that
    connection comes batched too."""
    alice, mallory = await peers("guest", "alice"), await peers("guest", "mallory")
    client = await peers("client", "gvt", hold=True)
    a1, a2 = (await alice.create_vm("alice-vm1")).vm, (await alice.create_vm("alice-vm2")).vm
    mal = (await mallory.create_vm("mallory-vm")).vm
    for vm in (a1, a2, mal):
        await client.claim_bar0(vm)
    futs = await alice.start_ioreq_batch([(a1, 0, MMIO, R, BAR0), (a1, 1, MMIO, R, BAR0 + 8),
                                          (mal, 0, MMIO, R, BAR0), (a2, 0, MMIO, R, BAR0 + 16)])
    with pytest.raises(IoreqError) as err:
        await asyncio.wait_for(futs[2], 5)
    assert err.value.code == "forged_id" and (err.value.error.vm, err.value.error.vcpu) == (mal, 0)
    await client.until(lambda: client.received == 3)
    held = client.held
    assert sorted((r.vm, r.vcpu) for r in held) == sorted([(a1, 0), (a1, 1), (a2, 0)])
    await client.conn.send(m.IoreqComplete(reqs=[m.IoreqResult(vm=r.vm, vcpu=r.vcpu, seq=r.seq, value=r.addr)
                                                 for r in held]))
    async with asyncio.timeout(5):
        values = await asyncio.gather(futs[0], futs[1], futs[3])
    assert values == [BAR0, BAR0 + 8, BAR0 + 16]
    assert alice.done_batches == [3] and not alice.stray
    # a plain IOREQ of this connection is answered inside an IOREQ_DONE_BATCH too (the vhm fallback: no
    # client claims that address, all ones)
    assert await alice.ioreq(a1, 0, MMIO, R, 0xFED0_0000, size=2) == 0xFFFF and alice.done_batches == [3, 1]
    assert await mallory.ioreq(mal, 0, MMIO, R, 0xFED0_0000, size=2) == 0xFFFF and mallory.done_batches == []
    # one vCPU named twice: the whole batch is refused with one ERROR, nothing of it is dispatched
    futs = await alice.start_ioreq_batch([(a2, 1, MMIO, R, BAR0), (a2, 1, MMIO, R, BAR0 + 8)])
    await alice.until(lambda: any(isinstance(x, m.Error) and x.code == "bad_request" for x in alice.stray))
    assert not any(f.done() for f in futs)
    st = await status(vhm)
    assert st.counters["ioreq_batches"] == 1 and st.counters["ioreq_batch_refused"] == 1
    assert st.counters["authz_refused_owner_IOREQ"] == 1
    assert st.counters["error_sent_forged_id"] == 1 and st.counters["ioreq_dispatched"] == 3


async def test_a_guest_on_two_connections_keeps_its_vms_when_the_older_one_ends(vhm, peers):
    """A guest whose socket reconnected while its old connection's HELLO was still on the way says HELLO
    on both (the same id and epoch) and sends on the new one; the old connection then ends. Its VMs are
    the new connection's from its HELLO on: usable at once, and not destroyed with the old one (a
    forged_id here reset whole stacks after vhm restarts under a 64-VM chaos load)."""
    old = await peers("guest", "twice")
    vm = (await old.create_vm("kept")).vm
    new = await peers("guest", "twice")  # the same name and, in this process, the same epoch
    # the guest sends on its new connection at once, while the old one still lives
    assert await new.ioreq(vm, 1, MMIO, R, 0xFED0_0000, size=2) == 0xFFFF
    await old.close()
    st = await status(vhm)
    for _ in range(100):
        if st.counters.get("vms_moved_to_reconnected_guest"):
            break
        await asyncio.sleep(0.05)  # vhm handles the BYE in its own time: poll its STATUS
        st = await status(vhm)
    assert st.counters["vms_moved_to_reconnected_guest"] == 1
    assert [v["vm"] for v in st.info["vms"]["list"]] == [vm]
    assert await new.ioreq(vm, 0, MMIO, R, 0xFED0_0000, size=2) == 0xFFFF  # its own VM: no forged_id


async def test_msi_reaches_the_right_guest_and_no_other(vhm, peers):
    a, b = await peers("guest", "guest-a"), await peers("guest", "guest-b")
    client = await peers("client", "gvt")
    vm_a, vm_b = (await a.create_vm("a")).vm, (await b.create_vm("b")).vm
    ok = await client.conn.request(m.InjectMsi, vm=vm_a, addr=0xFEE0_1000, data=0x4041, timeout=5)
    assert isinstance(ok, m.Ok) and ok.value == 1
    await client.conn.request(m.InjectMsi, vm=vm_b, addr=0xFEE0_0000, data=0x30, timeout=5)
    await a.until(lambda: a.msis[vm_a])
    await b.until(lambda: b.msis[vm_b])
    assert a.msis == {vm_a: [m.Msi(vm=vm_a, addr=0xFEE0_1000, data=0x4041, seq=1)]}
    # b's own MSI was sent after a's: had a's gone to b, b would have seen it first
    assert b.msis == {vm_b: [m.Msi(vm=vm_b, addr=0xFEE0_0000, data=0x30, seq=1)]}
    with pytest.raises(RemoteError) as err:
        await client.conn.request(m.InjectMsi, vm=vm_b + 100, addr=0, data=0, timeout=5)
    assert err.value.code == "no_such_vm"


# ================================================================================================ faults
async def test_client_killed_with_requests_processing(vhm, peers, scripted):
    guest = await peers("guest", "guest")
    vms = [(await guest.create_vm(f"vm{i}", vcpus=2)).vm for i in range(2)]
    # started from a thread: the in-process peers must keep heartbeating meanwhile
    client = await asyncio.to_thread(scripted, "client", vhm.endpoint, "--vms", ",".join(map(str, vms)), "--hold")
    futs = [await guest.start_ioreq(vm, vcpu, MMIO, R, BAR0 + 0x100) for vm in vms for vcpu in range(2)]
    await asyncio.to_thread(client.wait_event, lambda e: e.get("event") == "dispatched" and e["count"] == 4, 5)
    assert not any(f.done() for f in futs)
    client.kill(signal.SIGKILL)
    killed = time.monotonic()
    outcomes = await asyncio.gather(*(asyncio.wait_for(f, 5) for f in futs), return_exceptions=True)
    took = time.monotonic() - killed
    assert all(isinstance(o, IoreqError) and o.code == "client_lost" for o in outcomes), outcomes
    assert took < 5
    st = await status(vhm)
    assert st.info["clients"] == [] and st.counters["ioreq_failed_client_lost"] == 4
    assert all(v["busy_vcpus"] == 0 for v in st.info["vms"]["list"])
    # the client's ranges went with it: the next access goes to the fallback
    assert await guest.ioreq(vms[0], 0, MMIO, R, BAR0 + 0x100) == 0xFFFF_FFFF
    print(f"\nvhm: 4 PROCESSING ioreqs failed with client_lost {took:.3f}s after SIGKILL of the client "
          f"(silence detection, then the 1 s grace for a reconnect)")


async def test_guest_killed_destroys_its_vms_and_frees_frames(vhm, peers, scripted):
    client = await peers("client", "gvt", vgpu_space=4)
    before = await status(vhm)
    guest = await asyncio.to_thread(scripted, "guest", vhm.endpoint, "--vms", "3", "--ram-mb", "8",
                                    "--vgpu-type", "GVTg_V5_4")
    vms = guest.ready["vms"]
    assert len(vms) == 3 and all(v > 0 for v in guest.ready["vgpu_ids"])
    during = await status(vhm)
    assert during.info["vms"]["count"] == 3
    assert during.info["free_frames"] < before.info["free_frames"] - 3 * 8 * 256
    guest.kill(signal.SIGKILL)
    after = await wait_status(vhm, lambda s: s.info["vms"]["count"] == 0
                              and s.info["free_frames"] == before.info["free_frames"])
    assert after.counters["vms_destroyed"] == 3
    assert sorted(vm for tag, vm in client.vgpu_calls if tag == "VGPU_DESTROY") == sorted(vms)
    assert client.vgpus == {}


async def test_vm_with_a_vgpu_is_created_reset_and_destroyed_through_the_device_model(vhm, peers):
    guest = await peers("guest", "guest")
    with pytest.raises(RemoteError) as err:
        await guest.create_vm("early", vgpu_type="GVTg_V5_4")
    assert err.value.code == "no_device_model"
    client = await peers("client", "gvt", vgpu_space=1)
    free0 = (await status(vhm)).info["free_frames"]
    created = await guest.create_vm("with-gpu", vgpu_type="GVTg_V5_4")
    assert created.vgpu_id == client.vgpus[created.vm] and ("VGPU_CREATE", created.vm) in client.vgpu_calls
    with pytest.raises(RemoteError) as err:
        await guest.create_vm("no-room", vgpu_type="GVTg_V5_4")
    assert err.value.code == "no_space"
    st = await status(vhm)
    assert st.info["vms"]["count"] == 1 and st.info["vms"]["list"][0]["vgpu_id"] == created.vgpu_id
    ok = await guest.conn.request(m.VmReset, vm=created.vm, timeout=5)
    assert isinstance(ok, m.Ok) and ("VGPU_RESET", created.vm) in client.vgpu_calls
    ok = await guest.conn.request(m.VmDestroy, vm=created.vm, timeout=5)
    assert isinstance(ok, m.Ok) and ("VGPU_DESTROY", created.vm) in client.vgpu_calls
    assert (await status(vhm)).info["free_frames"] == free0


async def test_bad_input_is_answered_and_counted(vhm, ctx, peers):
    guest = await peers("guest", "guest")
    vm = (await guest.create_vm("vm")).vm
    with pytest.raises(RemoteError) as err:  # an MPT call from a guest
        await guest.conn.request(m.ReadGpa, vm=vm, gpa=0, length=16, timeout=5)
    assert err.value.code == "unexpected"
    with pytest.raises(IoreqError) as err2:  # guests never send PCI
        await guest.ioreq(vm, 0, IoreqType.PCI, R, 0xCFC)
    assert err2.value.code == "bad_request"
    client = await peers("client", "gvt")
    with pytest.raises(RemoteError) as err3:
        await client.conn.request(m.ReadGpa, vm=vm, gpa=(4 << 20) - 8, length=16, timeout=5)
    assert err3.value.code == "bad_address"
    data = await client.conn.request(m.ReadGpa, vm=vm, gpa=(4 << 20) - 16, length=16, timeout=5)
    assert isinstance(data, m.Data) and data.data == bytes(16)
    await client.conn.send(m.IoreqComplete(reqs=[m.IoreqResult(vm=vm, vcpu=0, seq=99, value=0)]))
    st = await wait_status(vhm, lambda s: s.counters.get("stale_completions") == 1)
    assert st.counters["authz_refused_role_READ_GPA"] == 1 and st.counters["error_bad_request"] >= 1
    assert st.counters["error_bad_address"] == 1
    # the same guest carries on
    assert await guest.ioreq(vm, 1, MMIO, R, 0xFED0_0000, size=1) == 0xFF
