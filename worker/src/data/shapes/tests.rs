//! The generated videos are checked against docs/architecture.md's definition by *measuring the
//! pixels*, not by reading the generator's own parameters back.

use super::*;
use std::collections::HashSet;

fn spec(frames: usize, size: usize, seed: u64) -> ShapesSpec {
    ShapesSpec {
        frames,
        size,
        text_len: 4,
        text_dim: 32,
        seed,
        text_seed: 99,
    }
}

/// What one frame shows: the non-black pixels' bounding box and colours.
struct FrameView {
    /// (row, col) of every non-black pixel.
    lit: Vec<(usize, usize)>,
    colours: HashSet<[u8; 3]>,
}

fn frame(px: &[u8], s: usize, t: usize) -> FrameView {
    let mut lit = Vec::new();
    let mut colours = HashSet::new();
    for r in 0..s {
        for c in 0..s {
            let at = ((t * s + r) * s + c) * 3;
            let rgb = [px[at], px[at + 1], px[at + 2]];
            if rgb != [0, 0, 0] {
                lit.push((r, c));
                colours.insert(rgb);
            }
        }
    }
    FrameView { lit, colours }
}

/// Number of 4-connected components of the lit pixels.
fn components(lit: &[(usize, usize)]) -> usize {
    let set: HashSet<_> = lit.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut n = 0;
    for &p in lit {
        if !seen.insert(p) {
            continue;
        }
        n += 1;
        let mut stack = vec![p];
        while let Some((r, c)) = stack.pop() {
            let nbrs = [
                (r.wrapping_sub(1), c),
                (r + 1, c),
                (r, c.wrapping_sub(1)),
                (r, c + 1),
            ];
            for q in nbrs {
                if set.contains(&q) && seen.insert(q) {
                    stack.push(q);
                }
            }
        }
    }
    n
}

/// Checks one video against the definition; returns its measured (class, direction).
fn check_video(spec: &ShapesSpec, v: &ShapeVideo) -> (u32, (i64, i64)) {
    let (s, o) = (spec.size, spec.object_side());
    let (shape, colour) = class_parts(v.class);
    let want_mask = object_mask(shape, o);
    let mut corners = Vec::new();
    for t in 0..spec.frames {
        let f = frame(&v.pixels, s, t);
        // One object, one colour: the class's.
        assert_eq!(components(&f.lit), 1, "frame {t}: exactly one object");
        assert_eq!(
            f.colours,
            HashSet::from([COLOURS[colour as usize]]),
            "frame {t}: the class colour"
        );
        // Its bounding box is o x o and fully inside the frame (no pixel clipped).
        let rmin = f.lit.iter().map(|p| p.0).min().unwrap();
        let rmax = f.lit.iter().map(|p| p.0).max().unwrap();
        let cmin = f.lit.iter().map(|p| p.1).min().unwrap();
        let cmax = f.lit.iter().map(|p| p.1).max().unwrap();
        assert_eq!(
            (rmax - rmin + 1, cmax - cmin + 1),
            (o, o),
            "frame {t}: object is {o}x{o}"
        );
        // The lit pattern inside the box is the shape's (square: all; disk: the circle rule),
        // and everything else is black: the lit count equals the mask count.
        for i in 0..o {
            for j in 0..o {
                let on = f.lit.contains(&(rmin + i, cmin + j));
                assert_eq!(
                    on,
                    want_mask[i * o + j],
                    "frame {t}: pixel ({i},{j}) of the box"
                );
            }
        }
        assert_eq!(
            f.lit.len(),
            want_mask.iter().filter(|&&m| m).count(),
            "frame {t}: black background"
        );
        corners.push((cmin as i64, rmin as i64));
    }
    // Constant velocity of step * (a, b), (a, b) one of the 8 directions.
    let d = (corners[1].0 - corners[0].0, corners[1].1 - corners[0].1);
    for w in corners.windows(2) {
        assert_eq!((w[1].0 - w[0].0, w[1].1 - w[0].1), d, "constant velocity");
    }
    let step = spec.step();
    assert!(
        d.0 % step == 0 && d.1 % step == 0,
        "moves in steps of {step}"
    );
    let dir = (d.0 / step, d.1 / step);
    assert!(
        DIRECTIONS.contains(&dir),
        "direction {dir:?} is one of the 8"
    );
    // The disk's measured shape tells the class's shape apart from the square.
    let measured_shape = if want_mask.iter().all(|&m| m) { 0 } else { 1 };
    assert_eq!(measured_shape, shape);
    (v.class, dir)
}

#[test]
fn videos_match_the_definition_and_cover_every_class_and_direction() {
    for (frames, size) in [(8, 16), (4, 32), (12, 32), (8, 64)] {
        let spec = spec(frames, size, 1);
        let mut classes = HashSet::new();
        let mut directions = HashSet::new();
        for i in 0..400 {
            let (c, d) = check_video(&spec, &generate(&spec, i));
            classes.insert(c);
            directions.insert(d);
        }
        assert_eq!(classes.len(), 8, "all 8 classes occur ({frames}x{size})");
        assert_eq!(
            directions.len(),
            8,
            "all 8 directions occur ({frames}x{size})"
        );
    }
}

#[test]
fn starting_positions_cover_the_allowed_range() {
    // Uniform over the positions that keep the object inside: over many videos moving right,
    // x0 takes every value from 0 to S - o - step (T - 1) and never more.
    let spec = spec(8, 16, 4);
    let mut xs = HashSet::new();
    for i in 0..4000 {
        let v = generate(&spec, i);
        if v.velocity.0 > 0 {
            xs.insert(v.origin.0);
        }
    }
    let max = 16 - 4 - 7;
    assert_eq!(xs, (0..=max).collect::<HashSet<i64>>());
}

#[test]
fn disk_mask_follows_the_circle_rule() {
    // o = 4: centre 1.5, radius 2: the four corners are off, everything else on.
    let m = object_mask(1, 4);
    let off: Vec<usize> = (0..16).filter(|&k| !m[k]).collect();
    assert_eq!(off, vec![0, 3, 12, 15]);
    assert!(object_mask(0, 4).iter().all(|&b| b));
}

#[test]
fn generation_is_deterministic_per_seed() {
    let a = spec(8, 16, 7);
    let same: Vec<_> = (0..50).map(|i| generate(&a, i)).collect();
    let again: Vec<_> = (0..50).map(|i| generate(&a, i)).collect();
    assert_eq!(same, again);
    let other: Vec<_> = (0..50).map(|i| generate(&spec(8, 16, 8), i)).collect();
    assert_ne!(same, other, "a different seed gives different videos");
    assert_eq!(text_table(&a), text_table(&a));
    assert_ne!(
        text_table(&a),
        text_table(&ShapesSpec {
            text_seed: 100,
            ..a
        })
    );
}

#[test]
fn pixel_scaling_round_trips() {
    let s = spec(8, 16, 2);
    let v = generate(&s, 3);
    let lat = pixels_to_latents(&v.pixels, 8, 16);
    assert!(lat.iter().all(|&x| (-1.0..=1.0).contains(&x)));
    // Black is -1 and full intensity is +1, channels first.
    assert!(lat.iter().any(|&x| x == 1.0) && lat.iter().any(|&x| x == -1.0));
    assert_eq!(latents_to_pixels(&lat, 8, 16), v.pixels);
}
