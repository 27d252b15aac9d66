"""Korean-looking personal data, generated a column at a time (numpy draws, pyarrow string kernels).

Names are a surname drawn by its real frequency plus two given-name syllables
from gender-leaning lists; resident registration numbers carry the birth date,
the gender-and-century digit and the pre-2020 check digit; phones are 010
mobiles. Nothing here is a real person's data: combinations are random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from numpy.random import Generator

# Surname, romanization, share of the population in percent (census 2015, rounded).
SURNAMES = [
    ("김", "kim", 21.5), ("이", "lee", 14.7), ("박", "park", 8.4), ("최", "choi", 4.7),
    ("정", "jung", 4.3), ("강", "kang", 2.4), ("조", "cho", 2.1), ("윤", "yoon", 2.1),
    ("장", "jang", 2.0), ("임", "lim", 1.7), ("한", "han", 1.5), ("오", "oh", 1.5),
    ("서", "seo", 1.5), ("신", "shin", 1.4), ("권", "kwon", 1.4), ("황", "hwang", 1.4),
    ("안", "ahn", 1.3), ("송", "song", 1.3), ("전", "jeon", 1.1), ("홍", "hong", 1.1),
    ("유", "yoo", 1.1), ("고", "ko", 0.9), ("문", "moon", 0.9), ("양", "yang", 0.9),
    ("손", "son", 0.9), ("배", "bae", 0.8), ("백", "baek", 0.8), ("허", "heo", 0.7),
    ("남", "nam", 0.5), ("심", "sim", 0.5), ("노", "noh", 0.4), ("하", "ha", 0.4),
    ("곽", "kwak", 0.4), ("성", "sung", 0.4), ("차", "cha", 0.4), ("주", "joo", 0.4),
    ("우", "woo", 0.4), ("구", "koo", 0.4), ("민", "min", 0.3), ("류", "ryu", 0.3),
    ("나", "na", 0.3), ("진", "jin", 0.3), ("지", "ji", 0.3), ("엄", "um", 0.3),
    ("채", "chae", 0.3), ("원", "won", 0.3), ("천", "chun", 0.2), ("방", "bang", 0.2),
    ("공", "kong", 0.2), ("현", "hyun", 0.2),
]  # fmt: skip

ROMAN = {
    "가": "ga", "건": "geon", "겸": "gyeom", "결": "gyeol", "경": "kyung", "규": "kyu", "기": "ki",
    "나": "na", "다": "da", "도": "do", "동": "dong", "린": "rin", "미": "mi", "민": "min",
    "범": "beom", "병": "byung", "보": "bo", "빈": "bin", "상": "sang", "서": "seo", "석": "seok",
    "선": "sun", "성": "sung", "세": "se", "소": "so", "수": "su", "숙": "sook", "승": "seung",
    "시": "si", "식": "sik", "아": "a", "연": "yeon", "영": "young", "예": "ye", "완": "wan",
    "용": "yong", "우": "woo", "욱": "wook", "원": "won", "유": "yu", "윤": "yoon", "율": "yul",
    "은": "eun", "이": "i", "인": "in", "재": "jae", "정": "jung", "종": "jong", "주": "ju",
    "준": "jun", "지": "ji", "진": "jin", "찬": "chan", "채": "chae", "철": "chul", "태": "tae",
    "하": "ha", "한": "han", "현": "hyun", "형": "hyung", "혜": "hye", "호": "ho", "환": "hwan",
    "효": "hyo", "후": "hoo", "훈": "hoon", "혁": "hyuk", "희": "hee",
}  # fmt: skip
GIVEN_FIRST = {
    "M": "민준서도예시주지현건우성정동영상재승태진형경용종병한세윤하은",
    "F": "서지민수하예윤은유채다소혜미현정영선경연나아가보희주인시효",
}
GIVEN_SECOND = {
    "M": "준호민우현진수훈혁석철식환빈원규영성재찬율후겸결완기범욱",
    "F": "연윤아은진영희경숙정현민서원빈린율하나지주유이미선혜",
}
EMAIL_DOMAINS = [
    ("naver.com", 40), ("gmail.com", 25), ("daum.net", 10), ("hanmail.net", 8),
    ("kakao.com", 5), ("nate.com", 5), ("hotmail.com", 4), ("icloud.com", 3),
]  # fmt: skip

# Province, districts, weight (roughly by population).
REGIONS = [
    ("서울특별시",
     "강남구|서초구|송파구|강동구|마포구|영등포구|용산구|성동구|광진구|노원구|관악구|은평구|종로구|중구", 19),
    ("경기도",
     "수원시 영통구|성남시 분당구|고양시 일산동구|용인시 수지구|부천시|안양시 동안구|"
     "화성시|남양주시|평택시|파주시", 26),
    ("부산광역시", "해운대구|부산진구|동래구|남구|수영구|사하구|연제구", 7),
    ("인천광역시", "연수구|남동구|부평구|서구|미추홀구|계양구", 6),
    ("대구광역시", "수성구|달서구|북구|중구|동구", 5),
    ("대전광역시", "유성구|서구|중구|대덕구", 3),
    ("광주광역시", "서구|북구|광산구|남구", 3),
    ("울산광역시", "남구|중구|울주군", 2),
    ("세종특별자치시", "세종시", 1),
    ("경상남도", "창원시 성산구|김해시|진주시|양산시|거제시", 6),
    ("경상북도", "포항시 남구|구미시|경주시|안동시", 5),
    ("충청남도", "천안시 서북구|아산시|당진시|서산시", 4),
    ("충청북도", "청주시 흥덕구|충주시|제천시", 3),
    ("전라북도", "전주시 완산구|익산시|군산시", 3),
    ("전라남도", "여수시|순천시|목포시|나주시", 3),
    ("강원특별자치도", "춘천시|원주시|강릉시|속초시", 3),
    ("제주특별자치도", "제주시|서귀포시", 1),
]  # fmt: skip
ROADS = [
    "테헤란로", "세종대로", "올림픽로", "강남대로", "한강대로", "중앙로", "시청로", "번영로", "동서대로",
    "월드컵로", "도산대로", "봉은사로", "삼일대로", "경인로", "문화로", "대학로", "공원로", "역전로",
    "새말로", "은행로", "학교로", "중부대로", "광교로", "해맞이로", "수목원로", "가로수길", "백범로",
    "충장로", "계룡로", "달구벌대로",
]  # fmt: skip

# Merchant cities and a few neighbourhoods of each, for branch names ("스타벅스 역삼점").
CITIES = [
    ("서울", "역삼 강남역 신촌 홍대입구 잠실 여의도 광화문 명동 건대입구 노원 목동 성수", 30),
    ("부산", "서면 해운대 센텀 남포 동래 광안리", 8), ("인천", "송도 부평 구월 청라", 6),
    ("대구", "동성로 수성 범어 칠곡", 5), ("대전", "둔산 유성 은행동", 3),
    ("광주", "상무 충장로 첨단", 3), ("울산", "삼산 성남동", 2), ("세종", "나성 도담", 1),
    ("수원", "수원역 광교 영통 인계", 4), ("성남", "분당 판교 서현 야탑", 4),
    ("고양", "일산 화정 백석", 3), ("용인", "수지 기흥 동백", 3), ("창원", "상남 중앙동", 2),
    ("청주", "성안길 가경 오창", 2), ("전주", "고사동 효자동", 2), ("천안", "신부동 불당", 2),
    ("제주", "연동 노형 서귀포", 2), ("화성", "동탄 봉담", 2), ("김해", "내외동 장유", 1),
    ("포항", "양덕 죽도", 1),
]  # fmt: skip


def _strings(values: list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _pick(values: list[str], idx: np.ndarray) -> pa.Array:
    return _strings(values).take(pa.array(idx))


def zero_padded(values: np.ndarray, width: int) -> pa.Array:
    """Non-negative integers as zero-padded decimal strings."""
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _weighted(rng: Generator, weights: list[float] | np.ndarray, size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=size, p=p / p.sum())


def names(rng: Generator, female: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Hangul full names and their romanized parts (surname, first and second given syllable)."""
    n = len(female)
    surname = _weighted(rng, [w for _, _, w in SURNAMES], n)
    first_m, first_f = GIVEN_FIRST["M"], GIVEN_FIRST["F"]
    second_m, second_f = GIVEN_SECOND["M"], GIVEN_SECOND["F"]
    # one index space per syllable position: male list, then female list
    first = np.where(
        female, len(first_m) + rng.integers(0, len(first_f), n), rng.integers(0, len(first_m), n)
    )
    second = np.where(
        female, len(second_m) + rng.integers(0, len(second_f), n), rng.integers(0, len(second_m), n)
    )
    firsts, seconds = list(first_m + first_f), list(second_m + second_f)
    hangul = _join(_pick([s for s, _, _ in SURNAMES], surname), _pick(firsts, first), _pick(seconds, second))
    return (
        hangul,
        _pick([r for _, r, _ in SURNAMES], surname),
        _pick([ROMAN[s] for s in firsts], first),
        _pick([ROMAN[s] for s in seconds], second),
    )


def emails(
    rng: Generator, surname: pa.Array, given1: pa.Array, given2: pa.Array, birth_year: np.ndarray
) -> pa.Array:
    """Addresses in the usual styles: jihoonkim87@naver.com, kim.jihoon123@gmail.com, jhkim4821@daum.net."""
    n = len(surname)
    style = rng.integers(0, 3, n)
    yy = zero_padded(birth_year % 100, 2)
    number = pc.cast(pa.array(rng.integers(1, 1000, n)), pa.string())
    initials = _join(pc.utf8_slice_codeunits(given1, 0, 1), pc.utf8_slice_codeunits(given2, 0, 1))
    local0 = _join(given1, given2, surname, yy)
    local1 = _join(surname, ".", given1, given2, number)
    local2 = _join(initials, surname, zero_padded(rng.integers(0, 10_000, n), 4))
    local = pc.if_else(pa.array(style == 0), local0, pc.if_else(pa.array(style == 1), local1, local2))
    domain = _pick([d for d, _ in EMAIL_DOMAINS], _weighted(rng, [w for _, w in EMAIL_DOMAINS], n))
    return _join(local, "@", domain)


def phones(rng: Generator, n: int) -> pa.Array:
    """'010-NNNN-NNNN' mobiles; the middle group of a real number does not start with 0 or 1."""
    return _join(
        "010-", zero_padded(rng.integers(2000, 10_000, n), 4), "-", zero_padded(rng.integers(0, 10_000, n), 4)
    )


_RRN_WEIGHTS = np.array([2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5])


def rrns(rng: Generator, birth: np.ndarray, female: np.ndarray) -> pa.Array:
    """Resident registration numbers 'YYMMDD-GNNNNNN' for datetime64[D] birth dates.

    G is 1/2 (male/female) for births in the 1900s and 3/4 from 2000; then four
    region digits, a serial digit and the check digit of the pre-2020 scheme.
    """
    n = len(birth)
    year = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    month = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    g = np.where(year >= 2000, 3, 1) + female.astype(np.int64)
    region = rng.integers(0, 9600, n)
    serial = rng.integers(0, 10, n)
    front = (year % 100) * 10_000 + month * 100 + day
    body = g * 100_000 + region * 10 + serial  # the first six of the seven back digits
    digits = np.column_stack(
        [(front // 10**k) % 10 for k in range(5, -1, -1)] + [(body // 10**k) % 10 for k in range(5, -1, -1)]
    )
    check = (11 - (digits @ _RRN_WEIGHTS) % 11) % 10
    return _join(zero_padded(front, 6), "-", zero_padded(body * 10 + check, 7))


def addresses(rng: Generator, n: int) -> pa.Array:
    """Road-name addresses, most with a block and unit: '서울특별시 강남구 테헤란로 152, 103동 1502호'."""
    places = [(p, d, w / len(ds.split("|"))) for p, ds, w in REGIONS for d in ds.split("|")]
    place = _pick([f"{p} {d}" for p, d, _ in places], _weighted(rng, [w for _, _, w in places], n))
    road = _pick(ROADS, rng.integers(0, len(ROADS), n))
    number = pc.cast(pa.array(np.minimum(rng.geometric(1 / 60, n), 999)), pa.string())
    flat = _join(
        ", ",
        pc.cast(pa.array(rng.integers(101, 121, n)), pa.string()),
        "동 ",
        pc.cast(pa.array(rng.integers(1, 26, n) * 100 + rng.integers(1, 7, n)), pa.string()),
        "호",
    )
    tail = pc.if_else(pa.array(rng.random(n) < 0.6), flat, "")
    return _join(place, " ", road, " ", number, tail)


def merchant_places(rng: Generator, n: int) -> tuple[pa.Array, pa.Array]:
    """A city for each merchant and a branch name ('역삼점') from that city's neighbourhoods."""
    city = _weighted(rng, [w for _, _, w in CITIES], n)
    hoods = [h.split() for _, h, _ in CITIES]
    offsets = np.cumsum([0] + [len(h) for h in hoods])
    hood = offsets[city] + (rng.random(n) * np.array([len(h) for h in hoods])[city]).astype(np.int64)
    branch = _join(_pick([x for h in hoods for x in h], hood), "점")
    return _pick([c for c, _, _ in CITIES], city), branch
