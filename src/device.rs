//! The CPU/GPU switch: burn's `flex` backend on the CPU, its `wgpu` backend on a GPU.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use anyhow::{Result, bail};
use burn::tensor::Device;
// burn's kind of wgpu adapter, not maas's CPU/GPU [`DeviceKind`].
use burn::tensor::DeviceKind as AdapterKind;
use burn::tensor::wgpu::{WgpuBackend, wgpu};
use wgpu::Backends;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when the machine has one, else the CPU.
    Auto,
    /// The CPU (burn's flex backend).
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal or DX12; OpenGL only when there is nothing else); an
    /// error when there is none.
    Gpu,
}

/// The kind of device a [`Selected`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU (burn's flex backend).
    Cpu,
    /// A GPU (burn's wgpu backend), software rasterizers included.
    Gpu,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
        })
    }
}

/// The device that will run the model, and how to name it to people.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The burn device.
    pub device: Device,
    /// CPU or GPU.
    pub kind: DeviceKind,
    /// A human description, e.g. `gpu (NVIDIA H100, wgpu)`.
    pub description: String,
}

impl Selected {
    /// The CPU.
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            kind: DeviceKind::Cpu,
            description: "cpu (burn flex backend)".into(),
        }
    }
}

/// A wgpu adapter on one graphics API.
#[derive(Clone)]
struct Adapter {
    api: WgpuBackend,
    kind: AdapterKind,
    name: String,
    hardware: bool,
}

/// The graphics APIs maas takes a GPU through, best first. OpenGL is the last resort: wgpu's GL
/// backend serialises every call through one context lock, which deadlocks under load
/// (llvmpipe: "Could not lock adapter context"), so it is used only where nothing else exists.
const APIS: [WgpuBackend; 4] = [
    WgpuBackend::Vulkan,
    WgpuBackend::Metal,
    WgpuBackend::Dx12,
    WgpuBackend::Gl,
];

/// A graphics API's name for people.
fn api_name(api: WgpuBackend) -> &'static str {
    match api {
        WgpuBackend::Vulkan => "Vulkan",
        WgpuBackend::Metal => "Metal",
        WgpuBackend::Dx12 => "DX12",
        WgpuBackend::Gl => "OpenGL",
        _ => "WebGPU",
    }
}

/// Runs a future that is ready at once or soon (listing adapters), without an async runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut context) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The adapters `api` reaches on this machine, in wgpu's order, each with the burn device kind
/// that addresses it (an index per kind, as cubecl counts them). Software rasterizers
/// (llvmpipe, lavapipe, WARP) are marked as such.
fn adapters_on(api: WgpuBackend) -> Vec<Adapter> {
    let backends = match api {
        WgpuBackend::Vulkan => Backends::VULKAN,
        WgpuBackend::Metal => Backends::METAL,
        WgpuBackend::Dx12 => Backends::DX12,
        WgpuBackend::Gl => Backends::GL,
        _ => return Vec::new(),
    };
    // The graphics stack is outside our control; a driver that panics while being listed must
    // not take maas down, it only means this API has no usable adapter.
    let infos = catch_unwind(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        block_on(instance.enumerate_adapters(backends))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    let (mut discrete, mut integrated, mut virtual_gpu) = (0, 0, 0);
    let next = |n: &mut usize| {
        *n += 1;
        *n - 1
    };
    infos
        .into_iter()
        .map(|info| {
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => AdapterKind::DiscreteGpu(next(&mut discrete)),
                wgpu::DeviceType::IntegratedGpu => {
                    AdapterKind::IntegratedGpu(next(&mut integrated))
                }
                wgpu::DeviceType::VirtualGpu => AdapterKind::VirtualGpu(next(&mut virtual_gpu)),
                wgpu::DeviceType::Cpu => AdapterKind::Cpu,
                // Not addressable by kind: burn's default device on that API reaches it.
                wgpu::DeviceType::Other => AdapterKind::DefaultDevice,
            };
            Adapter {
                api,
                hardware: info.device_type != wgpu::DeviceType::Cpu,
                kind,
                name: info.name,
            }
        })
        .collect()
}

/// Every adapter of every API in [`APIS`], listed once per process: graphics instances are made
/// and dropped here one at a time, never beside another `select` doing the same (the Vulkan
/// loader does not survive instances coming and going on several threads at once).
fn all_adapters() -> &'static [Adapter] {
    static FOUND: OnceLock<Vec<Adapter>> = OnceLock::new();
    FOUND.get_or_init(|| APIS.into_iter().flat_map(adapters_on).collect())
}

/// Whether the machine may have a hardware GPU, judged from the device nodes under `dev`
/// without loading a graphics driver: on Linux a GPU driver shows itself as a DRM render node
/// (`dri/renderD*`, Mesa's drivers), `nvidia*` (NVIDIA's) or `dxg` (WSL). Why: asking Vulkan
/// takes about 150 ms, most of a one-image `predict`, and where none of these nodes exist it can
/// only find software rasterizers, which `auto` does not take anyway. Elsewhere (macOS,
/// Windows) the answer is always yes and the drivers are asked.
fn may_have_hardware_gpu(dev: &Path) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let has = |dir: &Path, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has(&dev.join("dri"), "renderD") || has(dev, "nvidia") || dev.join("dxg").exists()
}

/// The adapter `choice` takes among `found` (listed in [`APIS`] order): a hardware GPU on
/// Vulkan, Metal or DX12, then (`gpu` only) a software one there, then OpenGL's, hardware first
/// (`auto` only takes hardware). `None`: no GPU for this choice.
fn pick(choice: DeviceChoice, found: Vec<Adapter>) -> Option<Adapter> {
    let rank = |a: &Adapter| (a.api == WgpuBackend::Gl, !a.hardware);
    found
        .into_iter()
        .filter(|a| choice == DeviceChoice::Gpu || a.hardware)
        .enumerate()
        .min_by_key(|(i, a)| (rank(a), *i))
        .map(|(_, a)| a)
}

/// The devices brought up so far, one per adapter: a wgpu runtime is registered once per
/// process, and a second `select` (tests, `explain` after `predict`) reuses it.
static STARTED: Mutex<Vec<((WgpuBackend, AdapterKind), Device)>> = Mutex::new(Vec::new());

/// The description of the GPU in use, once one was brought up: the panic hook names it when the
/// graphics stack fails mid-run (see [`gpu_failure`]).
static IN_USE: Mutex<Option<String>> = Mutex::new(None);

/// Brings up `adapter` on its graphics API now, so that a driver that cannot start is an error
/// naming it here rather than a panic at the first tensor.
fn start(adapter: &Adapter, description: &str) -> Result<Device> {
    let key = (adapter.api, adapter.kind.clone());
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, device)) = started.iter().find(|(k, _)| *k == key) {
        return Ok(device.clone());
    }
    let init = catch_unwind(|| {
        Device::wgpu_options()
            .device_kind(adapter.kind.clone())
            .graphics_api(adapter.api)
            .init()
    });
    let device = match init {
        Ok(Ok(device)) => device,
        Ok(Err(e)) => bail!("{description} failed to start: {e}; use --device cpu"),
        Err(message) => bail!("{description} failed to start: {message}; use --device cpu"),
    };
    started.push((key, device.clone()));
    Ok(device)
}

/// Runs `f`, turning a panic into its message (a driver's panic is not maas's bug).
fn catch_unwind<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the graphics driver panicked".into())
    })
}

/// The one line to print, instead of an internal error, for a panic raised at `file` (its
/// location) while a GPU is in use: wgpu and cubecl panic when the graphics stack fails
/// mid-run (a lost device, GL's context lock), which is the device's failure, not maas's.
/// `None`: not a GPU failure.
pub fn gpu_failure(file: &str, message: &str) -> Option<String> {
    let in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let graphics = ["wgpu", "cubecl"]
        .iter()
        .any(|c| file.contains(&format!("/{c}")) || file.contains(&format!("\\{c}")));
    graphics.then(|| format!("the GPU failed: {in_use}: {message}; rerun with --device cpu"))
}

/// Resolves `--device` to a device.
///
/// `auto` takes a hardware GPU and otherwise the CPU: a software rasterizer such as llvmpipe is
/// slower than the CPU backend it would emulate. `gpu` takes a hardware GPU when there is one, and
/// otherwise any wgpu adapter, software ones included, so that the GPU path can be exercised on a
/// machine without a GPU. Both go through Vulkan, Metal or DX12 when the machine has them, and
/// through OpenGL only when it has nothing else, with a notice on stderr.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    if choice == DeviceChoice::Cpu
        || (choice == DeviceChoice::Auto && !may_have_hardware_gpu(Path::new("/dev")))
    {
        return Ok(Selected::cpu());
    }
    let Some(adapter) = pick(choice, all_adapters().to_vec()) else {
        if choice == DeviceChoice::Gpu {
            bail!(
                "--device gpu: no GPU adapter found (no Vulkan, Metal, DX12 or OpenGL driver answered); \
                 use --device cpu, or install the GPU's Vulkan driver (mesa-vulkan-drivers gives a software one)"
            );
        }
        return Ok(Selected::cpu());
    };
    let description = format!(
        "gpu ({}{}, {}, burn wgpu backend)",
        adapter.name,
        if adapter.hardware { "" } else { ", software" },
        api_name(adapter.api)
    );
    if adapter.api == WgpuBackend::Gl {
        eprintln!(
            "maas: notice: no Vulkan, Metal or DX12 adapter found; using OpenGL ({}), which is \
             slower and can fail under load: install the GPU's Vulkan driver, or use --device cpu",
            adapter.name
        );
    }
    let device = start(
        &adapter,
        &format!("--device {}: {description}", choice_name(choice)),
    )?;
    *IN_USE.lock().unwrap_or_else(|e| e.into_inner()) = Some(description.clone());
    Ok(Selected {
        device,
        kind: DeviceKind::Gpu,
        description,
    })
}

fn choice_name(choice: DeviceChoice) -> &'static str {
    match choice {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Gpu => "gpu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_gpu_needs_a_device_node() {
        let dev = tempfile::tempdir().unwrap();
        assert!(!may_have_hardware_gpu(dev.path()));
        std::fs::create_dir(dev.path().join("dri")).unwrap();
        std::fs::write(dev.path().join("dri/card0"), b"").unwrap();
        assert!(
            !may_have_hardware_gpu(dev.path()),
            "a display-only card0 is no render node"
        );
        std::fs::write(dev.path().join("dri/renderD128"), b"").unwrap();
        assert!(may_have_hardware_gpu(dev.path()));

        let dev = tempfile::tempdir().unwrap();
        std::fs::write(dev.path().join("nvidia0"), b"").unwrap();
        assert!(may_have_hardware_gpu(dev.path()));
        let dev = tempfile::tempdir().unwrap();
        std::fs::write(dev.path().join("dxg"), b"").unwrap();
        assert!(may_have_hardware_gpu(dev.path()));
    }

    fn adapter(api: WgpuBackend, name: &str, hardware: bool) -> Adapter {
        Adapter {
            api,
            kind: AdapterKind::DefaultDevice,
            name: name.into(),
            hardware,
        }
    }

    fn picked(choice: DeviceChoice, found: Vec<Adapter>) -> Option<String> {
        pick(choice, found).map(|a| a.name)
    }

    #[test]
    fn opengl_is_taken_only_when_no_other_api_has_an_adapter() {
        let gl = || adapter(WgpuBackend::Gl, "gl-hw", true);
        let lavapipe = || adapter(WgpuBackend::Vulkan, "lavapipe", false);
        let vk = || adapter(WgpuBackend::Vulkan, "vk-hw", true);
        // A software Vulkan beats a "hardware" OpenGL for --device gpu (wgpu's GL backend
        // deadlocks under load); auto takes only hardware, so the OpenGL one as a last resort.
        assert_eq!(
            picked(DeviceChoice::Gpu, vec![lavapipe(), gl()]).unwrap(),
            "lavapipe"
        );
        assert_eq!(
            picked(DeviceChoice::Auto, vec![lavapipe(), gl()]).unwrap(),
            "gl-hw"
        );
        assert_eq!(
            picked(DeviceChoice::Gpu, vec![lavapipe(), vk(), gl()]).unwrap(),
            "vk-hw"
        );
        assert_eq!(
            picked(DeviceChoice::Auto, vec![gl(), vk()]).unwrap(),
            "vk-hw"
        );
        assert_eq!(
            picked(
                DeviceChoice::Gpu,
                vec![adapter(WgpuBackend::Gl, "llvmpipe", false)]
            )
            .unwrap(),
            "llvmpipe"
        );
        assert_eq!(picked(DeviceChoice::Auto, vec![lavapipe()]), None);
        assert_eq!(picked(DeviceChoice::Gpu, vec![]), None);
        // Same rank: wgpu's order.
        let second = adapter(WgpuBackend::Vulkan, "vk-hw-2", true);
        assert_eq!(
            picked(DeviceChoice::Gpu, vec![vk(), second]).unwrap(),
            "vk-hw"
        );
    }

    #[test]
    fn a_graphics_panic_is_the_gpu_s_failure_only_while_a_gpu_is_in_use() {
        let file = "/root/.cargo/registry/src/x/wgpu-hal-30.0.2/src/gles/egl.rs";
        let message = "Could not lock adapter context. This is most-likely a deadlock.";
        *IN_USE.lock().unwrap() = None;
        assert_eq!(gpu_failure(file, message), None);
        *IN_USE.lock().unwrap() =
            Some("gpu (llvmpipe, software, OpenGL, burn wgpu backend)".into());
        assert_eq!(
            gpu_failure(file, message).unwrap(),
            "the GPU failed: gpu (llvmpipe, software, OpenGL, burn wgpu backend): Could not lock \
             adapter context. This is most-likely a deadlock.; rerun with --device cpu"
        );
        assert_eq!(gpu_failure("src/serve/batcher.rs", "a bug"), None);
        *IN_USE.lock().unwrap() = None;
    }
}
