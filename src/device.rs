//! The CPU/GPU switch: burn's `flex` backend on the CPU, its `wgpu` backend on a GPU.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{Device, DeviceType};

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when the machine has one, else the CPU.
    Auto,
    /// The CPU (burn's flex backend).
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal or DX12); an error when there is none.
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

struct Adapter {
    device: Device,
    name: String,
    hardware: bool,
}

/// Every wgpu adapter the machine offers; software rasterizers (llvmpipe) are marked as such.
fn adapters() -> Vec<Adapter> {
    // The graphics stack is outside our control; a driver that panics while being listed must
    // not take maas down, it only means there is no usable GPU.
    catch_unwind(AssertUnwindSafe(|| {
        Device::enumerate(DeviceType::Wgpu)
            .into_vec()
            .into_iter()
            .map(|device| {
                let identity = device.identity();
                let name = identity
                    .as_ref()
                    .map_or_else(|| "unknown adapter".to_string(), |i| i.name.clone());
                let hardware = identity.is_some_and(|i| i.physical.is_some());
                Adapter {
                    device,
                    name,
                    hardware,
                }
            })
            .collect()
    }))
    .unwrap_or_default()
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

/// Resolves `--device` to a device.
///
/// `auto` takes a hardware GPU and otherwise the CPU: a software rasterizer such as llvmpipe is
/// slower than the CPU backend it would emulate. `gpu` takes a hardware GPU when there is one, and
/// otherwise any wgpu adapter, software ones included, so that the GPU path can be exercised on a
/// machine without a GPU.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    if choice == DeviceChoice::Cpu
        || (choice == DeviceChoice::Auto && !may_have_hardware_gpu(Path::new("/dev")))
    {
        return Ok(Selected::cpu());
    }
    let mut found = adapters();
    found.sort_by_key(|a| !a.hardware);
    let pick = match (choice, found.into_iter().next()) {
        (DeviceChoice::Gpu, None) => bail!(
            "--device gpu: no GPU adapter found (no Vulkan, Metal or DX12 driver answered); \
             use --device cpu, or install the GPU's Vulkan driver (mesa-vulkan-drivers gives a software one)"
        ),
        (DeviceChoice::Auto, Some(a)) if !a.hardware => None,
        (_, a) => a,
    };
    Ok(match pick {
        Some(a) => Selected {
            device: a.device,
            kind: DeviceKind::Gpu,
            description: format!(
                "gpu ({}{}, burn wgpu backend)",
                a.name,
                if a.hardware { "" } else { ", software" }
            ),
        },
        None => Selected::cpu(),
    })
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
}
