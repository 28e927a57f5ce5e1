//! Plane geometry in image pixels, shared by the face model and the warps.

/// A 2-D point or vector in image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pt {
    /// x, to the right.
    pub x: f32,
    /// y, downwards.
    pub y: f32,
}

impl Pt {
    /// A point.
    pub const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }
    /// `self + o`.
    pub fn plus(self, o: Pt) -> Pt {
        Pt::new(self.x + o.x, self.y + o.y)
    }
    /// `self - o`.
    pub fn minus(self, o: Pt) -> Pt {
        Pt::new(self.x - o.x, self.y - o.y)
    }
    /// `self × k`.
    pub fn times(self, k: f32) -> Pt {
        Pt::new(self.x * k, self.y * k)
    }
    /// Euclidean length.
    pub fn len(self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }
    /// Midpoint.
    pub fn mid(self, o: Pt) -> Pt {
        Pt::new((self.x + o.x) / 2.0, (self.y + o.y) / 2.0)
    }
    /// Dot product.
    pub fn dot(self, o: Pt) -> f32 {
        self.x * o.x + self.y * o.y
    }
}
