//! Keyset pagination shared by every list route: `limit` (1..=500, default 50) and an opaque
//! `cursor` (the last id of the previous page; ids are UUIDv7, so they sort by time).

use conveyor_shared::enqueue::FieldError;
use uuid::Uuid;

use crate::error::ApiError;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// A requested page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Return rows with ids below this one.
    pub before: Option<Uuid>,
    pub limit: i64,
}

impl Page {
    /// Reads `limit` and `cursor`, adding a field error for each bad one.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>, errors: &mut Vec<FieldError>) -> Page {
        let limit = match limit.map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
                DEFAULT_LIMIT
            }
        };
        let before = cursor.and_then(|c| {
            let parsed = c.parse::<Uuid>().ok();
            if parsed.is_none() {
                errors.push(FieldError::new(
                    "cursor",
                    "not a cursor returned by this API",
                ));
            }
            parsed
        });
        Page { before, limit }
    }

    /// A page from `limit` and `cursor` alone, for lists with no other filter.
    pub fn only(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, ApiError> {
        let mut errors = Vec::new();
        let page = Page::parse(limit, cursor, &mut errors);
        if errors.is_empty() {
            Ok(page)
        } else {
            Err(ApiError::Validation(errors))
        }
    }

    /// How many rows to fetch: one more than the page, to tell whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Trims the extra row off `rows` and returns the cursor of the next page, if any.
    pub fn finish<T>(&self, rows: &mut Vec<T>, id: impl Fn(&T) -> Uuid) -> Option<String> {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(|row| id(row).to_string())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finishes_pages() {
        let mut errors = Vec::new();
        let page = Page::parse(Some("2"), None, &mut errors);
        assert!(errors.is_empty());
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let mut rows = ids.to_vec();
        assert_eq!(page.finish(&mut rows, |u| *u), Some(ids[1].to_string()));
        assert_eq!(rows.len(), 2);
        let bad = Page::parse(Some("0"), Some("nope"), &mut errors);
        assert_eq!(bad.limit, DEFAULT_LIMIT);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "cursor"]);
    }
}
