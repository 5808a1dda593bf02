//! The models renderq renders with.
pub mod clip;
pub mod stable_diffusion;
pub mod with_tracing;
