//! The model's graph as Graphviz DOT: the layers a render runs, their
//! output shapes at its size, and which feed the content, style and total
//! losses (the assignment's TensorBoard graph, as a file).

use std::fmt::Write;

use crate::error::Result;
use crate::arch::{conv_index, pooled, VGG19};
use crate::params::{Pooling, RenderParams};

/// DOT for a render of `width`×`height` with `params`.
pub fn dot(params: &RenderParams, width: usize, height: usize) -> Result<String> {
    let content: Vec<(usize, f64)> = params.content_layers.iter().map(|l| Ok((conv_index(&l.layer)?, l.weight))).collect::<Result<_>>()?;
    let style: Vec<(usize, f64)> = params.style_layers.iter().map(|l| Ok((conv_index(&l.layer)?, l.weight))).collect::<Result<_>>()?;
    let depth = content.iter().chain(&style).map(|(i, _)| i + 1).max().unwrap_or(0);
    let pool = match params.pooling {
        Pooling::Avg => "avg pool 2×2 (SAME)",
        Pooling::Max => "max pool 2×2 (SAME)",
    };
    let mut s = String::new();
    let w = |s: &mut String, line: String| {
        let _ = writeln!(s, "  {line}");
    };
    let _ = writeln!(s, "digraph vgg19 {{\n  rankdir=TB;\n  node [shape=box, fontname=\"sans-serif\"];");
    w(&mut s, format!("input [label=\"image\\n{height}×{width}×3 (BGR − mean)\", shape=ellipse];"));
    let (mut h, mut wd) = (height, width);
    let mut prev = "input".to_string();
    for (i, layer) in VGG19.iter().enumerate().take(depth) {
        if let Some(before) = i.checked_sub(1).map(|j| &VGG19[j]).filter(|l| l.pool_after) {
            h = pooled(h);
            wd = pooled(wd);
            let name = format!("pool{}", before.block);
            w(&mut s, format!("{name} [label=\"{pool}\\n{h}×{wd}×{}\", style=filled, fillcolor=\"#eeeeee\"];", before.out_channels));
            w(&mut s, format!("{prev} -> {name};"));
            prev = name;
        }
        let name = layer.name;
        w(&mut s, format!("{name} [label=\"{name}: conv 3×3 + ReLU\\n{h}×{wd}×{}\"];", layer.out_channels));
        w(&mut s, format!("{prev} -> {name};"));
        prev = name.to_string();
    }
    w(&mut s, "total [label=\"total loss\", shape=ellipse, style=filled, fillcolor=\"#ffe08a\"];".into());
    if params.alpha > 0.0 && !content.is_empty() {
        w(&mut s, "content_loss [label=\"content loss\\nΣ(F−P)²/(4s)\", shape=ellipse, style=filled, fillcolor=\"#a8d0ff\"];".into());
        for (i, weight) in &content {
            w(&mut s, format!("{} -> content_loss [label=\"×{weight}\", color=blue];", VGG19[*i].name));
        }
        w(&mut s, format!("content_loss -> total [label=\"α = {}\"];", params.alpha));
    }
    if params.beta > 0.0 && !style.is_empty() {
        w(&mut s, "style_loss [label=\"style loss\\nΣ w·Σ(G−A)²/(4N²M²)\", shape=ellipse, style=filled, fillcolor=\"#ffb0b0\"];".into());
        for (i, weight) in &style {
            w(&mut s, format!("{} -> style_loss [label=\"w = {weight}\", color=red];", VGG19[*i].name));
        }
        w(&mut s, format!("style_loss -> total [label=\"β = {}\"];", params.beta));
    }
    if params.tv_weight > 0.0 {
        w(&mut s, "tv_loss [label=\"total variation\", shape=ellipse];".into());
        w(&mut s, "input -> tv_loss;".into());
        w(&mut s, format!("tv_loss -> total [label=\"{}\"];", params.tv_weight));
    }
    s.push_str("}\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_graph_runs_to_conv5_1_and_wires_the_losses() {
        let g = dot(&RenderParams::default(), 333, 250).unwrap();
        assert!(g.contains("conv5_1") && !g.contains("conv5_2"), "only as deep as needed");
        assert!(g.contains("conv4_2 -> content_loss"));
        for l in ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"] {
            assert!(g.contains(&format!("{l} -> style_loss")), "{l}");
        }
        // 250 → 125 → 63 → 32 → 16 rows at conv5_1 (SAME pooling).
        assert!(g.contains("conv5_1: conv 3×3 + ReLU\\n16×21×512"), "{g}");
        assert!(g.contains("avg pool"));
        assert_eq!(g.matches('{').count(), g.matches('}').count());
    }
}
