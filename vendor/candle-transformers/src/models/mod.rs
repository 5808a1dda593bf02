//! The models renderq renders with.
pub mod clip;
pub mod cpu_conv;
pub mod stable_diffusion;
pub mod with_tracing;
