//! `placeholder`: the default model. A card per job: a background seeded by the job's
//! seed, the prompt typeset on it, and the seed and size in the corner, so a person
//! can tell jobs apart at a glance. Deterministic: same job, same pixels.

use async_trait::async_trait;
use font8x8::{BASIC_FONTS, LATIN_FONTS, UnicodeFonts};
use image::{Rgb, RgbImage};

use super::{PanicOn, RenderError, RenderRequest, Renderer, on_blocking_pool};

/// The default model: a deterministic picture of the prompt, with no weights to load.
#[derive(Default)]
pub struct PlaceholderRenderer {
    panic_on: PanicOn,
}

impl PlaceholderRenderer {
    /// The placeholder renderer.
    pub fn new() -> Self {
        PlaceholderRenderer::default()
    }

    /// For failure drills: panic on a poison prompt (`--panic-on`).
    pub fn panicking_on(mut self, poison: PanicOn) -> Self {
        self.panic_on = poison;
        self
    }
}

#[async_trait]
impl Renderer for PlaceholderRenderer {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        let batch = batch.to_vec();
        let poison = self.panic_on.clone();
        on_blocking_pool(move || {
            poison.check(batch.iter().map(|r| r.prompt.as_str()));
            batch.iter().map(|r| Ok(card(r))).collect()
        })
        .await
    }
}

/// splitmix64: a tiny, well-mixed generator, enough for colours.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn colour(bits: u64) -> [f32; 3] {
    // Mid-dark colours keep white text legible on any seed.
    [0, 8, 16].map(|s| 40.0 + ((bits >> s) & 0xFF) as f32 * 0.55)
}

/// Draws the card for one request.
pub fn card(req: &RenderRequest) -> RgbImage {
    let (w, h) = (req.width, req.height);
    let top = colour(mix(req.seed));
    let bottom = colour(mix(req.seed ^ 0xA5A5_A5A5));
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        let t = (y as f32 + x as f32 * 0.25) / (h as f32 + w as f32 * 0.25);
        Rgb([0, 1, 2].map(|i| (top[i] + (bottom[i] - top[i]) * t) as u8))
    });
    let scale = (w.min(h) / 256).max(1);
    let glyph = 8 * scale;
    let margin = glyph;
    let cols = ((w.saturating_sub(2 * margin)) / glyph).max(1) as usize;
    let line_h = glyph + scale * 2;
    let rows = ((h.saturating_sub(2 * margin + 2 * line_h)) / line_h).max(1) as usize;
    for (row, line) in wrap(&req.prompt, cols).iter().take(rows).enumerate() {
        let y = margin + row as u32 * line_h;
        draw_text(&mut img, line, margin, y, scale, Rgb([255, 255, 255]));
    }
    let footer = [format!("{w}x{h}"), format!("seed {}", req.seed)];
    for (i, text) in footer.iter().enumerate() {
        let text: String = text.chars().take(cols).collect();
        let y = h.saturating_sub(margin + glyph + (1 - i as u32) * line_h);
        draw_text(&mut img, &text, margin, y, scale, Rgb([230, 230, 230]));
    }
    img
}

/// Greedy word wrap at `cols` characters; words longer than a line are cut.
fn wrap(text: &str, cols: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > cols {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..cols).collect());
        }
        let word: String = word.into_iter().collect();
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > cols {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn draw_text(img: &mut RgbImage, text: &str, x0: u32, y0: u32, scale: u32, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let bitmap = BASIC_FONTS
            .get(c)
            .or_else(|| LATIN_FONTS.get(c))
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x0 + i as u32 * 8 * scale;
        for (row, bits) in bitmap.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (gx + col * scale + dx, y0 + row as u32 * scale + dy);
                        if x < img.width() && y < img.height() {
                            img.put_pixel(x, y, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;

    fn req(prompt: &str, seed: u64) -> RenderRequest {
        RenderRequest {
            job_id: JobId::generate(),
            model: "placeholder".into(),
            prompt: prompt.into(),
            negative_prompt: None,
            width: 256,
            height: 128,
            steps: None,
            guidance: None,
            sampler: Default::default(),
            seed,
        }
    }

    #[test]
    fn cards_are_deterministic_and_differ_by_prompt_and_seed() {
        let a = card(&req("a red chair", 1));
        assert_eq!(a, card(&req("a red chair", 1)));
        assert_eq!(a.dimensions(), (256, 128));
        assert_ne!(a, card(&req("a blue chair", 1)));
        assert_ne!(a, card(&req("a red chair", 2)));
    }

    #[test]
    fn the_prompt_is_drawn_in_white() {
        let img = card(&req("HELLO", 7));
        let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert!(white > 50, "only {white} white pixels");
    }

    #[test]
    fn wrapping_keeps_every_word() {
        let lines = wrap("one two three fourfivesixseven", 8);
        assert!(lines.iter().all(|l| l.chars().count() <= 8), "{lines:?}");
        assert_eq!(
            lines.concat().replace(' ', ""),
            "onetwothreefourfivesixseven"
        );
    }
}
