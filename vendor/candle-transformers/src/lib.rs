//! candle-transformers 0.11.1, cut down to what renderq uses: Stable Diffusion
//! (UNet, VAE, CLIP text encoder, schedulers), CLIP, and the layers they share.
pub mod models;
pub mod quantized_var_builder;
