"""The simulated GPU's hardware definitions, in one place (the role of Linux's i915_reg.h, intel_lrc_reg.h,
intel_gpu_commands.h, i915_pvinfo.h and intel_engine_cs.c): engines, register offsets, the ring-context image,
execlist descriptor and CSB bits, GPU commands and their encoder, page and PTE formats.

gvt, pgpu and guest import these; none of them declares a hardware constant of its own. The package imports
nothing from the services: it is plain data and pure functions.

Modules: ``engines`` (the engine set), ``regs`` (MMIO register offsets, PVINFO, the context image, execlist
descriptor and CSB bits), ``opcodes`` (MI, blitter and pipe-control encodings), ``cmds`` (the command encoder),
``cmd_table`` (the gen9 command set, i915/gvt cmd_parser.c ``cmd_info[]``), ``gtt`` (page constants and PTE
formats), ``display`` (display engine registers, the X-tile layout), ``pci`` (configuration space and the
CONF1 ports), ``pv`` (the paravirtual shared page's layout).
"""
