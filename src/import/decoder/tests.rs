//! Tests of `decoder`.

use super::*;

/// Decodes `input` cut into chunks of `size`; returns the text, the first error and the
/// encoding settled on.
fn decode(
    input: &[u8],
    bom: Option<TextEncoding>,
    size: usize,
) -> (String, Option<DecodeError>, TextEncoding) {
    let mut decoder = Decoder::new(bom);
    let mut text = Vec::new();
    let mut emit = |t: &[u8], _: TextEncoding| -> Result<(), ()> {
        text.extend_from_slice(t);
        Ok(())
    };
    let invalid = |result: Result<(), Stop<()>>| match result {
        Ok(()) => None,
        Err(Stop::Invalid(e)) => Some(e),
        Err(Stop::Emit(())) => unreachable!("emit never fails here"),
    };
    let mut error = None;
    let pieces: Vec<&[u8]> = input.chunks(size.max(1)).collect();
    for piece in &pieces {
        error = invalid(decoder.decode(piece, false, &mut emit));
        if error.is_some() {
            break;
        }
    }
    if error.is_none() {
        error = invalid(decoder.decode(&[], true, &mut emit));
    }
    (String::from_utf8(text).unwrap(), error, decoder.encoding())
}

/// Decodes `input` whole and in chunks of every size, and checks that they all agree: the
/// decoder's promise that cuts change nothing, tested on every cut point.
fn every_chunking(
    input: &[u8],
    bom: Option<TextEncoding>,
) -> (String, Option<DecodeError>, TextEncoding) {
    let whole = decode(input, bom, input.len());
    for size in 1..input.len() {
        assert_eq!(decode(input, bom, size), whole, "chunks of {size}");
    }
    whole
}

/// Multi-byte characters of two, three and four bytes, cut at every byte.
#[test]
fn utf8_passes_through_whatever_the_cuts() {
    let text = "email,name\nzoë@x.io,Zoë 😀 Łukasz\n";
    assert_eq!(
        every_chunking(text.as_bytes(), None),
        (text.to_owned(), None, TextEncoding::Utf8)
    );
}

/// An ASCII file with a lone 0xE9 is Windows-1252, and its 0x80 to 0x9F range reads as
/// the typographic characters Excel writes there (the euro sign, curly quotes).
#[test]
fn windows_1252_is_recognised_when_it_is_clearly_that() {
    let text = b"email,name\nrene@x.io,Ren\xE9e \x80 \x93quoted\x94\n";
    assert_eq!(
        every_chunking(text, None),
        (
            "email,name\nrene@x.io,Renée € “quoted”\n".to_owned(),
            None,
            TextEncoding::Windows1252
        )
    );
}

#[test]
fn windows_1252_letters_that_look_like_utf8_lead_bytes_survive_any_cut() {
    // Found by the fuzzer: Æ (0xC6) could start a UTF-8 character, so one at the end of a
    // chunk waits for the next; a run of them must keep its order.
    let text = b"a,Ren\xE9e\nb,\xC6\xC6\xC6\xC6x\xC3\n";
    assert_eq!(
        every_chunking(text, None),
        (
            "a,Renée\nb,ÆÆÆÆxÃ\n".to_owned(),
            None,
            TextEncoding::Windows1252
        )
    );
}

/// Once a UTF-8 character was read, a later invalid byte cannot mean Windows-1252: the
/// text before it is kept, and the error names the byte.
#[test]
fn a_bad_byte_after_utf8_text_is_an_error() {
    let (text, error, encoding) = every_chunking("a,zoë\nb,\u{e9}".as_bytes(), None);
    assert_eq!(
        (text.as_str(), error, encoding),
        ("a,zoë\nb,é", None, TextEncoding::Utf8)
    );
    let (text, error, _) = every_chunking(b"a,zo\xC3\xAB\nb,x\xE9y\n", None);
    assert_eq!(text, "a,zoë\nb,x");
    assert_eq!(error, Some(DecodeError::InvalidUtf8 { byte: 0xE9 }));
}

/// After the switch, an undefined byte or a valid UTF-8 sequence stops the file at that
/// byte, with the text before it emitted.
#[test]
fn windows_1252_stops_at_undefined_bytes_and_utf8_sequences() {
    let (text, error, _) = every_chunking(b"a,Ren\xE9e\nb,\x81\n", None);
    assert_eq!(text, "a,Renée\nb,");
    assert_eq!(error, Some(DecodeError::NotWindows1252 { byte: 0x81 }));
    let (text, error, _) = every_chunking(b"a,Ren\xE9e\nb,Zo\xC3\xAB\n", None);
    assert_eq!(text, "a,Renée\nb,Zo");
    assert_eq!(error, Some(DecodeError::MixedEncodings));
}

/// Both byte orders, with a character outside the BMP (a surrogate pair cut anywhere).
#[test]
fn utf16_is_converted_as_it_streams() {
    let text = "email\tname\r\nzoë@x.io\tZoë 😀\r\n";
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    assert_eq!(every_chunking(&le, Some(TextEncoding::Utf16Le)).0, text);
    assert_eq!(every_chunking(&be, Some(TextEncoding::Utf16Be)).0, text);
    // An unpaired surrogate.
    let (_, error, _) = every_chunking(b"a\x00\x00\xD8b\x00", Some(TextEncoding::Utf16Le));
    assert_eq!(error, Some(DecodeError::InvalidUtf16));
}

/// Both byte orders; a unit that is no character, and a file that ends inside a unit,
/// are errors.
#[test]
fn utf32_is_converted_as_it_streams() {
    let text = "email,name\r\nzoë@x.io,Zoë 😀\r\n";
    let le: Vec<u8> = text
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    let be: Vec<u8> = text
        .chars()
        .flat_map(|c| u32::from(c).to_be_bytes())
        .collect();
    assert_eq!(every_chunking(&le, Some(TextEncoding::Utf32Le)).0, text);
    assert_eq!(every_chunking(&be, Some(TextEncoding::Utf32Be)).0, text);
    // A surrogate is no character; a file cut inside a unit is broken.
    let (text, error, _) = every_chunking(b"a\0\0\0\x00\xD8\0\0", Some(TextEncoding::Utf32Le));
    assert_eq!(
        (text.as_str(), error),
        ("a", Some(DecodeError::InvalidUtf32))
    );
    let (_, error, _) = every_chunking(b"a\0\0\0b\0", Some(TextEncoding::Utf32Le));
    assert_eq!(error, Some(DecodeError::InvalidUtf32));
}

/// Every mark, and the UTF-32LE mark is not taken for UTF-16LE's.
#[test]
fn byte_order_marks_are_recognised() {
    assert_eq!(
        sniff_bom(b"\xEF\xBB\xBFemail"),
        Some((TextEncoding::Utf8, 3))
    );
    assert_eq!(
        sniff_bom(b"\xFF\xFEe\x00"),
        Some((TextEncoding::Utf16Le, 2))
    );
    assert_eq!(
        sniff_bom(b"\xFE\xFF\x00e"),
        Some((TextEncoding::Utf16Be, 2))
    );
    assert_eq!(
        sniff_bom(b"\xFF\xFE\0\0e\0\0\0"),
        Some((TextEncoding::Utf32Le, 4))
    );
    assert_eq!(
        sniff_bom(b"\0\0\xFE\xFF\0\0\0e"),
        Some((TextEncoding::Utf32Be, 4))
    );
    assert_eq!(sniff_bom(b"email"), None);
}
