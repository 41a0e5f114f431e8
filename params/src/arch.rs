//! VGG-19's convolutional part described once: the 16 convolutions in
//! network order, their channel widths, where the 2×2 pooling layers sit and
//! which index each conv has in torchvision's `vgg19().features`.
//!
//! The leaf of everything that knows the network: the parameter checks
//! ([`crate::params`]), the tile geometry ([`crate::geometry`]), the memory
//! model, and the engine's network, weights readers and graph writer all
//! read this table instead of re-deriving any of it from layer names.

use crate::error::{ParamError, Result};

/// One convolution of VGG-19: 3×3, padding 1, followed by a ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    /// The paper's name, `conv<block>_<index>`.
    pub name: &'static str,
    /// Block number, 1–5 (blocks are separated by pooling).
    pub block: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Whether a 2×2 stride-2 pooling layer follows this conv (the last conv
    /// of blocks 1–4; the network here never runs past block 5's convs).
    pub pool_after: bool,
    /// Its index in torchvision's `vgg19().features` (the pooling and ReLU
    /// modules take the indices between), for importing such checkpoints.
    pub torchvision_index: usize,
}

const fn conv(name: &'static str, block: usize, in_channels: usize, out_channels: usize, pool_after: bool, torchvision_index: usize) -> ConvLayer {
    ConvLayer { name, block, in_channels, out_channels, pool_after, torchvision_index }
}

/// The 16 convolutions in network order.
pub const VGG19: [ConvLayer; 16] = [
    conv("conv1_1", 1, 3, 64, false, 0),
    conv("conv1_2", 1, 64, 64, true, 2),
    conv("conv2_1", 2, 64, 128, false, 5),
    conv("conv2_2", 2, 128, 128, true, 7),
    conv("conv3_1", 3, 128, 256, false, 10),
    conv("conv3_2", 3, 256, 256, false, 12),
    conv("conv3_3", 3, 256, 256, false, 14),
    conv("conv3_4", 3, 256, 256, true, 16),
    conv("conv4_1", 4, 256, 512, false, 19),
    conv("conv4_2", 4, 512, 512, false, 21),
    conv("conv4_3", 4, 512, 512, false, 23),
    conv("conv4_4", 4, 512, 512, true, 25),
    conv("conv5_1", 5, 512, 512, false, 28),
    conv("conv5_2", 5, 512, 512, false, 30),
    conv("conv5_3", 5, 512, 512, false, 32),
    conv("conv5_4", 5, 512, 512, false, 34),
];

/// Index in [`VGG19`] of a layer name such as `conv4_2`; unknown names are
/// refused with the list of valid ones.
pub fn conv_index(name: &str) -> Result<usize> {
    VGG19.iter().position(|l| l.name == name).ok_or_else(|| ParamError::UnknownLayer(name.to_string()))
}

/// Whether a pooling layer sits between conv `i` and conv `i + 1`.
pub fn pool_after(i: usize) -> bool {
    VGG19.get(i).is_some_and(|l| l.pool_after)
}

/// Side length after one 2×2 stride-2 pooling with TensorFlow's SAME rule:
/// `⌈n/2⌉` (a partial last window averages only its valid elements).
pub fn pooled(n: usize) -> usize {
    n.div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_chains_and_pools_between_blocks() {
        for pair in VGG19.windows(2) {
            assert_eq!(pair[0].out_channels, pair[1].in_channels, "{} → {}", pair[0].name, pair[1].name);
            assert_eq!(pair[0].pool_after, pair[0].block != pair[1].block, "{}", pair[0].name);
        }
        for l in VGG19 {
            assert!(l.name.starts_with(&format!("conv{}_", l.block)), "{}", l.name);
        }
        // torchvision: conv, ReLU (+ pool after a block's last conv).
        for pair in VGG19.windows(2) {
            let gap = if pair[0].pool_after { 3 } else { 2 };
            assert_eq!(pair[1].torchvision_index - pair[0].torchvision_index, gap, "{}", pair[1].name);
        }
        assert_eq!(conv_index("conv4_2").unwrap(), 9);
        assert!(conv_index("conv6_1").is_err());
        assert_eq!((pooled(250), pooled(1), pooled(4)), (125, 1, 2));
    }
}
