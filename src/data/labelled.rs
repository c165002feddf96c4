//! Images with their labels, as every dataset source loads them: CIFAR-10's binary files and
//! image folders alike end up as the same 32x32 channel-major bytes.

use std::fmt;

/// Bytes in one image: 3 channels of 32x32, channel-major (CIFAR-10's layout, kept in memory).
pub const IMAGE_BYTES: usize = 3072;

/// Images of one split (of CIFAR-10 or an image folder), kept as the raw channel-major bytes
/// (`len() * IMAGE_BYTES`) and labels (`len()`, each below the dataset's number of classes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LabelledImages {
    /// Image `i` is `images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]`: 1024 red, 1024 green, then
    /// 1024 blue bytes, each plane row-major.
    pub images: Vec<u8>,
    /// The label of image `i`: the index of its class name.
    pub labels: Vec<u8>,
}

impl LabelledImages {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The channel-major bytes of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing; [`LabelledImages::get`] is the checked form.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// The label of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// Image `i` and its label, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<(&[u8], u8)> {
        let label = *self.labels.get(i)?;
        let start = i.checked_mul(IMAGE_BYTES)?;
        let image = self.images.get(start..start.checked_add(IMAGE_BYTES)?)?;
        Some((image, label))
    }

    /// Every image with its label, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], u8)> + '_ {
        self.images
            .chunks_exact(IMAGE_BYTES)
            .zip(self.labels.iter().copied())
    }
}

// The derived form would print every one of 150 million bytes.
impl fmt::Debug for LabelledImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelledImages")
            .field("len", &self.len())
            .field("image_bytes", &self.images.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_debug() {
        let empty = LabelledImages::default();
        assert!(empty.is_empty());
        assert_eq!(empty.get(0), None);
        assert_eq!(
            format!("{empty:?}"),
            "LabelledImages { len: 0, image_bytes: 0 }"
        );
        let two = LabelledImages {
            images: (0..2 * IMAGE_BYTES)
                .map(|i| (i / IMAGE_BYTES) as u8)
                .collect(),
            labels: vec![3, 1],
        };
        assert_eq!(two.len(), 2);
        assert_eq!(two.image(1)[0], 1);
        assert_eq!(two.label(0), 3);
        assert_eq!(
            two.get(1).map(|(image, label)| (image[5], label)),
            Some((1, 1))
        );
        assert_eq!(two.iter().map(|(_, l)| l).collect::<Vec<_>>(), [3, 1]);
    }
}
