//! "As good as the recipe": the measure a faster configuration is held to.
//!
//! A render's total loss at α/β = 0.01 is more than 99.99 % style loss, so
//! reaching the recipe's total says little about the picture: a render can
//! get there while its content drifts away (a face dissolves). The bar is
//! therefore two-sided: the style loss at or below the recipe's final style
//! loss, and the content loss at most [`CONTENT_SLACK`] times the recipe's
//! final content loss — both of the full-size image, in float.

use crate::loss::{LossRecord, Losses};

/// How far above the recipe's content loss a render may end and still keep
/// the content a person sees in the recipe's render.
pub const CONTENT_SLACK: f64 = 1.10;

/// The recipe's final losses, as a bar to meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// The recipe's final style loss: at or below it.
    pub style: f64,
    /// The recipe's final content loss: at most [`CONTENT_SLACK`] times it.
    pub content: f64,
}

impl Bar {
    /// The bar a recipe render's final losses set.
    pub fn of_recipe(recipe_final: &Losses) -> Self {
        Self { style: recipe_final.style, content: recipe_final.content }
    }

    /// Whether an image with these losses is as good as the recipe's.
    pub fn met_by(&self, losses: &Losses) -> bool {
        losses.style <= self.style && losses.content <= CONTENT_SLACK * self.content
    }

    /// The first record of a render's log that meets the bar: its
    /// `seconds` is the render's time to "as good as the recipe".
    pub fn first_met<'a>(&self, history: &'a [LossRecord]) -> Option<&'a LossRecord> {
        history.iter().find(|r| self.met_by(&r.losses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn losses(content: f64, style: f64) -> Losses {
        Losses { content, style, tv: 0.0, total: 0.01 * content + style }
    }

    #[test]
    fn both_sides_of_the_bar_count() {
        let bar = Bar::of_recipe(&losses(3.0e4, 1.7e7));
        assert!(bar.met_by(&losses(3.0e4, 1.7e7)), "the recipe meets its own bar");
        assert!(bar.met_by(&losses(3.3e4, 1.0e7)), "10 % more content loss is allowed");
        assert!(!bar.met_by(&losses(3.31e4, 1.0e7)), "a lower total that lost the content does not count");
        assert!(!bar.met_by(&losses(1.0e4, 1.71e7)), "nor does a better content with less style");
        let history: Vec<LossRecord> = [(2.0e4, 3.0e7), (3.5e4, 1.6e7), (3.2e4, 1.5e7)]
            .iter()
            .enumerate()
            .map(|(i, &(c, s))| LossRecord { iteration: i, losses: losses(c, s), seconds: i as f64 })
            .collect();
        assert_eq!(bar.first_met(&history).map(|r| r.iteration), Some(2));
        assert!(bar.first_met(&history[..2]).is_none());
    }
}
