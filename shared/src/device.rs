//! `cpu` / `cuda:N`, the one spelling of a device on every command line.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device `{0}` is not cpu or cuda:N")]
    Unknown(String),
    #[error("device `{0}`: N in cuda:N must be a number")]
    BadIndex(String),
    #[error("device {0} is not available (this build needs the `cuda` feature and a GPU): {1}")]
    Unavailable(String, candle_core::Error),
}

/// Opens the device a spec names.
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().map_err(|_| DeviceError::BadIndex(s.to_string()))?;
            Device::new_cuda(n).map_err(|e| DeviceError::Unavailable(s.to_string(), e))
        }
        other => Err(DeviceError::Unknown(other.to_string())),
    }
}

/// The memory a render on `device` may use now: on the CPU what the
/// process's cgroup and the host leave ([`crate::budget::usable_memory`]), on
/// a GPU what its driver says is free. `None` when it cannot be told.
pub fn usable_memory(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => crate::budget::usable_memory(),
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => gpu.cuda_stream().context().mem_get_info().ok().map(|(free, _total)| free as u64),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_parsed_and_nonsense_is_named() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        assert!(matches!(open("gpu"), Err(DeviceError::Unknown(s)) if s == "gpu"));
        assert!(matches!(open("cuda:x"), Err(DeviceError::BadIndex(s)) if s == "cuda:x"));
        // Without the cuda feature (or a GPU) a CUDA device is refused by name.
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(open("cuda:0"), Err(DeviceError::Unavailable(s, _)) if s == "cuda:0"));
    }

    #[test]
    fn the_cpu_has_a_usable_memory_figure() {
        let cpu = usable_memory(&Device::Cpu).expect("Linux says what is available");
        assert_eq!(Some(cpu.min(crate::budget::usable_memory().unwrap())), Some(cpu), "the CPU's is the budget's figure");
    }
}
