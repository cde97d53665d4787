"""What a direct identifier looks like: the column-name tokens and the text patterns (phone
numbers, ID numbers, e-mail addresses, GPS points, a person's name after a title or cue) that
:mod:`pipeline.privacy` searches tables, value labels and stage outputs for. Pure functions on
strings; the rules are documented in docs/study_config.md ("What the detector refuses").
"""
from __future__ import annotations

import re


# ------------------------------------------------------------------------------------------------
# Identifier detection
# ------------------------------------------------------------------------------------------------
_GPS_TOKENS = {"lat", "latitude", "lon", "lng", "longitude", "gps", "geolocation", "geopoint", "geotrace",
               "geoshape", "coordinates", "coords", "geocode"}
_PHONE_TOKENS = {"phone", "phones", "phonenumber", "telephone", "tel", "msisdn", "whatsapp", "cellphone",
                 "mobilenumber", "mobileno"}
_EMAIL_TOKENS = {"email", "emails", "emailaddress", "mail"}
_NAME_TOKENS = {"name", "names", "fullname", "firstname", "lastname", "surname", "forename", "givenname",
                "familyname", "middlename", "nombre", "apellido", "prenom", "nom"}
# "district_name", "business_name": a place or an organisation, not a person
_NOT_PERSON = {"district", "village", "region", "province", "state", "county", "city", "town", "market",
               "business", "firm", "shop", "store", "product", "products", "company", "sector", "school",
               "branch", "bank", "file", "study", "variable", "brand", "country", "site", "street", "item",
               "crop", "activity", "lender", "institution", "program", "programme", "project"}
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 9-15 digits in phone-like groups ("+254 712 345 678", "0712-345-678", "(020) 345 6782",
# "0712345678"): single space or dash separators, groups of 2-4 digits after the first; not glued to
# letters, colons, dots, slashes (ids, timestamps, decimals), nor after "<digit>," (the tail of an amount:
# "1,250,000 2024-01-05" is not a phone), nor a run of table columns ("11594   11594"); dates written out are
# removed first (:func:`without_dates`);
# a dot after the number that ends a sentence ("... 0712 345 678.") is not a decimal point
PHONE_RE = re.compile(r"(?<![\w:/.\-])(?<!\d,)\+?(?:\(\d{1,4}\)[ -]?)?\d{1,5}(?:[ -]?\d{2,4}){1,5}(?![\w:/\-]|\.\d)")
# ID numbers (national ID, passport, tax, bank account): 8-20 digits, plain or in groups joined by one
# space or dash ("12345678", "0123-4567-8901", "1234 5678 9012 3456") or by dots before 3-digit groups
# ("12.345.678"); not glued to letters, colons, slashes or a decimal; or 6-9 digits after one or two
# capital letters ("A1234567", "CM12345678AB"). Dates, decimals and round amounts are not ID numbers
# (:func:`_is_id_number`).
ID_NUMBER_RE = re.compile(r"(?<![\w.:/\-])(?<!\d,)(?:\d+(?:[ -]\d{2,}|\.\d{3}(?!\d))*|[A-Z]{1,2}\d{6,9}[A-Z]{0,4})"
                          r"(?![\w:/]|[.,\-]\d)")
_DATE_DIGITS_RE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:[0-2]\d[0-5]\d(?:[0-5]\d)?)?")
# A person named in free text with an innocent column name ("spoke to Mary Wanjiku at her shop"): a
# capitalised word (not an acronym, weekday, month or pronoun) right after a title (Mr, Mrs, Ms, Dr,
# Mama, Mzee, Sra, Mme ...) or a cue that a person follows (spoke/talked to or with, met, interviewed,
# named, wife/son/daughter of ...). A bare pair of capitalised words is not enough: on the real
# studies' labels it flags 92 of 521 ("Composite Profits", "Business Services").
_TITLES = "mr mrs ms mx dr sir madam mama baba mzee bibi sra srta mme mlle".split()
_CUE_VERBS = "spoke spoken speaking talked talking met meeting interviewed named".split()
_RELATIONS = "wife husband son daughter mother father widow".split()
NAME_CUE_RE = re.compile(
    rf"(?i:\b(?:{'|'.join(_TITLES)})\.?"
    rf"|\b(?:{'|'.join(_CUE_VERBS)}|name\s+is|"
    rf"(?:{'|'.join(_RELATIONS)})\s+of)(?:\s+(?:to|with))?)"
    r"\s+([A-Z][\w'’-]*[a-z])\b")
_NOT_NAMES = {w.casefold() for w in (
    "The This That These Those He She They We You It Him Her Them His Their Our My Your Me Us "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December Today Yesterday Tomorrow").split()}


_CAPITAL_RE = re.compile(r"[A-Z]")


def cued_names(s: str) -> list[str]:
    if not _CAPITAL_RE.search(s):     # a name starts with a capital: skip the longer regex
        return []
    return [m.group(1) for m in NAME_CUE_RE.finditer(s) if m.group(1).casefold() not in _NOT_NAMES]


def has_cued_name(s: str) -> bool:
    return bool(cued_names(s))


GEOPOINT_RE = re.compile(r"^\s*-?\d{1,2}\.\d{3,}[\s,;]+-?\d{1,3}\.\d{3,}(\s+-?\d+(\.\d+)?){0,2}\s*$")


def _tokens(column: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(column))
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def name_finding(column: str) -> str | None:
    tokens = _tokens(column)
    joined = "".join(tokens)
    if any(t in _GPS_TOKENS for t in tokens):
        return "GPS coordinate column name"
    after_mobile = tokens[tokens.index("mobile") + 1:][:1] if "mobile" in tokens else None
    if any(t in _PHONE_TOKENS for t in tokens) or joined in _PHONE_TOKENS or (
            after_mobile is not None and after_mobile in ([], ["number"], ["no"], ["num"], ["phone"])):
        return "phone-number column name"
    if any(t in _EMAIL_TOKENS for t in tokens) or "email" in joined:
        return "e-mail column name"
    for i, t in enumerate(tokens):
        if t in _NAME_TOKENS and not (set(tokens[:i]) & _NOT_PERSON):
            return "person-name column name"
    return None


def phone_digits_ok(match: str) -> bool:
    digits = sum(ch.isdigit() for ch in match)
    return 9 <= digits <= 15


_DATE_RE = re.compile(r"(?:19|20)\d\d([-./])\d\d\1\d\d|\d\d([-./])\d\d\2(?:19|20)\d\d")


def without_dates(s: str) -> str:
    """``s`` with dates written out (2024-01-05, 05.01.2024) replaced by "|": "2024-01-05 2024-01-06"
    or "2024-01-05 0930" is not one long number."""
    return _DATE_RE.sub("|", s)


def has_phone_text(s: str) -> bool:
    return any(phone_digits_ok(m.group(0)) for m in PHONE_RE.finditer(without_dates(s)))


def _is_id_number(match: str) -> bool:
    """An ID-number match (:data:`ID_NUMBER_RE`) that is not a date or time stamp (20240105,
    2024-01-05 0930), a round amount (its digits end in 000: 12500000, 12 500 000), a decimal number
    (11415.837) nor a range of two ascending numbers (pages 5559-5583, years 2012-2013)."""
    if match[:1].isalpha():
        return True
    if "." in match and not re.fullmatch(r"\d{1,3}(?:\.\d{3}){2,}", match):
        return False                        # a decimal number (11415.837), not dot-grouped digits (12.345.678)
    digits = "".join(ch for ch in match if ch.isdigit())
    pair = re.fullmatch(r"(\d{1,5})-(\d{1,5})", match)
    if pair and int(pair.group(1)) < int(pair.group(2)):   # a range: pages 5559-5583, years 2012-2013
        return False
    return 8 <= len(digits) <= 20 and not digits.endswith("000") and not _DATE_DIGITS_RE.fullmatch(digits)


def id_numbers(s: str) -> list[str]:
    return [m.group(0) for m in ID_NUMBER_RE.finditer(without_dates(s)) if _is_id_number(m.group(0))]


def has_id_number_text(s: str) -> bool:
    """Free text (a value with letters) holding an ID number, or a bare value written in ID-number
    groups ("0123-4567-8901"; a bare "12345678" or "12 345 678" may be a code or an amount)."""
    found = id_numbers(s)
    if not found:
        return False
    if has_letters(s):
        return True
    return any(match[:1].isalpha() or (re.search(r"[ .-]", match) and not re.fullmatch(r"\d{1,3}(?:[ .]\d{3})+", match))
               for match in found)


def has_letters(s: str) -> bool:
    return any(ch.isalpha() for ch in s)


# ------------------------------------------------------------------------------------------------
# Necessary conditions (RE2, run by pyarrow.compute on a column's distinct values at once)
# ------------------------------------------------------------------------------------------------
# A value that fails a rule's condition cannot break the rule, so the Python rule above runs only on
# the values that pass (few, in real columns). The conditions hold for ASCII text, where Python's \d,
# \w, \s, str.isdigit and str.isalpha are exactly [0-9], [A-Za-z0-9_], [\t-\r\x1c-\x1f ], [0-9] and
# [A-Za-z] (RE2's \d, \w, \s differ on Unicode text and \s lacks \x0b, \x1c-\x1f, hence the explicit
# classes); non-ASCII values always run the Python rules.
#
# _DATE_RE without its back-references: each match is 10 characters long, so RE2 and Python, both
# replacing the leftmost match and resuming after it, remove the same spans: the same dateless text.
DATE_RE2 = (r"(?:19|20)[0-9]{2}(?:-[0-9]{2}-|\.[0-9]{2}\.|/[0-9]{2}/)[0-9]{2}"
            r"|[0-9]{2}(?:-[0-9]{2}-|\.[0-9]{2}\.|/[0-9]{2}/)(?:19|20)[0-9]{2}")
_SPACE = r"[\t-\r\x1c-\x1f ]"   # Python's \s on ASCII
NEEDS = {
    # EMAIL_RE has a literal "@"
    "email": ("text", "@"),
    # has_phone_text: a PHONE_RE match in the dateless text with >= 9 digits (phone_digits_ok): at the
    # start or after a character other than [\w:/.-] (its look-behind), "+", "(" or "+(" then the
    # first digit; in a match, consecutive digits are adjacent or apart by "[ -]" (between groups) or
    # ")[ -]?" (after the area code), so it holds 9 digits chained by at most two of ") -"
    "phone": ("dateless", r"(?:^|[^0-9A-Za-z_:/.\-])\+?\(?[0-9](?:[) -]{0,2}[0-9]){8}"),
    # has_id_number_text: an ID_NUMBER_RE match in the dateless text that _is_id_number accepts, at the
    # start or after a character other than [\w.:/-] (its look-behind): a digit run (digits apart by
    # at most one of " .-") with 8-20 digits, or one or two capitals then 6-9 digits ...
    "id_number": ("dateless", r"(?:^|[^0-9A-Za-z_.:/\-])(?:[0-9](?:[ .-]?[0-9]){7}|[A-Z]{1,2}[0-9]{6})"),
    # ... and the value has a letter, or the match (so the value) a separator " .-"
    "id_number_text": ("text", r"[A-Za-z .-]"),
    # NAME_CUE_RE: a cue (each alternative contains one of these words, matched case-insensitively)
    # then, after whitespace, the name's capital letter
    "cued_name": ("text", rf"(?i:{'|'.join(_TITLES + _CUE_VERBS + ['name'] + _RELATIONS)})(?s:.*){_SPACE}[A-Z]"),
    # GEOPOINT_RE: two numbers with a digit, a point and 3 digits, the second after the first
    "geopoint": ("text", r"[0-9]\.[0-9]{3}(?s:.*)[0-9]\.[0-9]{3}"),
}
