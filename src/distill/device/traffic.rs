//! Counters of what the step path moves between the host and the student's device.
//!
//! Every transfer the distill step makes goes through [`upload`], [`read_scalars`] or
//! [`super::super::optim::with_host_f32`], which add their bytes here. The counters are
//! per thread (a step runs on its caller's thread), so tests running side by side do not see
//! each other's traffic. On the CPU backend nothing is copied for real; the counters still say
//! what a GPU would have moved.

use std::cell::Cell;

use candle_core::{DType, Device, Shape, Tensor, WithDType};

thread_local! {
    static TO_DEVICE: Cell<u64> = const { Cell::new(0) };
    static TO_HOST: Cell<u64> = const { Cell::new(0) };
}

/// Bytes moved so far on this thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_device: u64,
    pub to_host: u64,
}

impl Traffic {
    /// The counters now.
    pub fn now() -> Self {
        Self {
            to_device: TO_DEVICE.with(Cell::get),
            to_host: TO_HOST.with(Cell::get),
        }
    }

    /// What moved since `earlier`.
    pub fn since(earlier: Self) -> Self {
        let now = Self::now();
        Self {
            to_device: now.to_device - earlier.to_device,
            to_host: now.to_host - earlier.to_host,
        }
    }
}

/// Count `bytes` copied from the device to the host.
pub fn count_to_host(bytes: usize) {
    TO_HOST.with(|c| c.set(c.get() + bytes as u64));
}

/// Count `bytes` copied from the host to the device.
pub fn count_to_device(bytes: usize) {
    TO_DEVICE.with(|c| c.set(c.get() + bytes as u64));
}

/// `Tensor::from_slice` on `device`, counted.
pub fn upload<T: WithDType, S: Into<Shape>>(
    data: &[T],
    shape: S,
    device: &Device,
) -> candle_core::Result<Tensor> {
    count_to_device(std::mem::size_of_val(data));
    Tensor::from_slice(data, shape, device)
}

/// A small tensor's values as f64 on the host, counted (its elements in its own dtype).
pub fn read_scalars(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    count_to_host(t.elem_count() * t.dtype().size_in_bytes());
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}
