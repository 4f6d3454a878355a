//! The English-like chat text every archival benchmark writes: bodies drawn word by word from a
//! skewed vocabulary (common words often, rare ones seldom), so they compress like English text
//! (≈ 3× with zstd -3), not like repeated strings. The same sequence every time (xorshift).

/// Words of the generated text, most common first.
const WORDS: &str = "the of and to in is you that it he was for on are as with his they at be this have from or \
    one had by word but not what all were we when your can said there use an each which she do how their if will up \
    other about out many then them these so some her would make like him into time has look two more write go see \
    number no way could people my than first water been call who oil its now find long down day did get come made may \
    part over new sound take only little work know place year live me back give most very after thing our just name \
    good sentence man think say great where help through much before line right too mean old any same tell boy follow \
    came want show also around form three small set put end does another well large must big even such because turn \
    here why ask went men read need land different home us move try kind hand picture again change off play spell air \
    away animal house point page letter mother answer found study still learn should america world";

/// A generator of chat bodies, and of the other random values of a benchmark's rows.
pub(crate) struct Prose {
    vocab: Vec<String>,
    rng: u64,
}

impl Prose {
    pub(crate) fn new() -> Self {
        let base: Vec<&str> = WORDS.split_whitespace().collect();
        let vocab = base.iter().flat_map(|w| ["", "s", "ed", "ing", "er", "ly"].map(|s| format!("{w}{s}"))).collect();
        Self { vocab, rng: 0x9E37_79B9_7F4A_7C15 }
    }

    /// The next random number of the sequence.
    pub(crate) fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Appends a body of 60–89 words (≈ 450 B): letters, spaces and full stops only; how many words.
    pub(crate) fn body(&mut self, out: &mut String) -> u64 {
        let words = 60 + self.next() % 30;
        let mut capital = true;
        for _ in 0..words {
            let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            let n = self.vocab.len();
            let w = &self.vocab[((u.powf(2.5) * n as f64) as usize).min(n - 1)];
            if capital {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    out.extend(f.to_uppercase());
                    out.push_str(c.as_str());
                }
            } else {
                out.push_str(w);
            }
            capital = self.next().is_multiple_of(12);
            out.push_str(if capital { ". " } else { " " });
        }
        words
    }
}
