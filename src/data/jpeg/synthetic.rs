//! Progressive JPEGs of any size and number of scans, written directly (the `image` crate writes
//! baseline files only): what the tests of the scan cap and of the memory a progressive decode
//! holds are made of, and what measures them (a "scan bomb" is one of these with many scans).

/// A valid progressive JPEG of `width` x `height` flat mid-grey pixels, `components` of them
/// (1: grey, 3: YCbCr), none subsampled, in `scans` scans: the DC scan of all components, then
/// the first component's AC scan (coefficients 1 to 63) again and again, which decoders take
/// without a warning (a first scan anew over coefficients already whole).
///
/// Every coefficient is zero, so each AC scan is a few bytes whatever the size (runs of up to
/// 32,767 empty blocks), yet a decoder goes over every block of the component at each one.
pub fn flat_progressive(width: u16, height: u16, components: u8, scans: usize) -> Vec<u8> {
    let blocks = usize::from(width).div_ceil(8) * usize::from(height).div_ceil(8);
    let mut out = vec![0xFF, 0xD8];
    // One quantisation table of ones.
    let mut dqt = vec![0];
    dqt.extend([1; 64]);
    segment(&mut out, 0xDB, &dqt);
    let [h0, h1] = height.to_be_bytes();
    let [w0, w1] = width.to_be_bytes();
    let mut sof = vec![8, h0, h1, w0, w1, components];
    for c in 1..=components {
        sof.extend([c, 0x11, 0]);
    }
    segment(&mut out, 0xC2, &sof);
    // DC table 0: one code, "0", for a difference of 0.
    let mut dc = vec![0x00, 1];
    dc.extend([0; 15]);
    dc.push(0);
    segment(&mut out, 0xC4, &dc);
    // AC table 0: the 15 end-of-band runs EOBr (symbol r << 4), codes of 4 bits: the code of
    // EOBr is r.
    let mut ac = vec![0x10, 0, 0, 0, 15];
    ac.extend([0; 12]);
    ac.extend((0..15).map(|r| r << 4));
    segment(&mut out, 0xC4, &ac);
    if scans == 0 {
        out.extend([0xFF, 0xD9]);
        return out;
    }
    // The DC scan, all components interleaved: one bit a block.
    let all: Vec<u8> = (1..=components).collect();
    start_of_scan(&mut out, &all, (0, 0), (0, 0));
    let mut bits = Bits::default();
    for _ in 0..blocks * usize::from(components) {
        bits.put(0, 1);
    }
    bits.finish(&mut out);
    for _ in 1..scans {
        start_of_scan(&mut out, &[1], (1, 63), (0, 0));
        // Runs of empty blocks: EOBr covers 2^r blocks and r more bits' worth.
        let mut bits = Bits::default();
        let mut left = blocks;
        while left > 0 {
            let run = left.min(32_767);
            let r = run.ilog2();
            bits.put(r, 4);
            bits.put(run as u32 - (1 << r), r);
            left -= run;
        }
        bits.finish(&mut out);
    }
    out.extend([0xFF, 0xD9]);
    out
}

/// Appends a marker segment: the marker, the length, the body.
fn segment(out: &mut Vec<u8>, code: u8, body: &[u8]) {
    out.extend([0xFF, code]);
    out.extend(((body.len() + 2) as u16).to_be_bytes());
    out.extend(body);
}

/// Appends a start of scan over `components`, table 0 for DC and AC, spectral band `(ss, se)`,
/// successive approximation bits `(ah, al)`.
fn start_of_scan(out: &mut Vec<u8>, components: &[u8], (ss, se): (u8, u8), (ah, al): (u8, u8)) {
    let mut sos = vec![components.len() as u8];
    for &c in components {
        sos.extend([c, 0x00]);
    }
    sos.extend([ss, se, (ah << 4) | al]);
    segment(out, 0xDA, &sos);
}

/// Entropy-coded bits, most significant first.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    acc: u32,
    count: u32,
}

impl Bits {
    /// Appends the low `n` bits of `value` (n at most 16).
    fn put(&mut self, value: u32, n: u32) {
        for i in (0..n).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.count += 1;
            if self.count == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let byte = self.acc as u8;
        self.bytes.push(byte);
        // A data byte 0xFF is followed by a stuffed 0x00 (not a marker).
        if byte == 0xFF {
            self.bytes.push(0);
        }
        (self.acc, self.count) = (0, 0);
    }

    /// Pads the last byte with ones and appends everything to `out`.
    fn finish(mut self, out: &mut Vec<u8>) {
        if self.count > 0 {
            let pad = 8 - self.count;
            self.put((1 << pad) - 1, pad);
        }
        out.extend(self.bytes);
    }
}
