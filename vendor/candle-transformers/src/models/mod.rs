//! The models renderq renders with.
pub mod clip;
pub mod cpu_conv;
pub mod cpu_norm;
pub mod stable_diffusion;
pub mod with_tracing;
