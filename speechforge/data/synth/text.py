"""English sentences for the synthetic corpus, from a small grammar of our own.

Everything a LibriSpeech-style transcript holds and a home assistant hears:
numbers spelled out ("TWENTY THREE"), dates ("THE FOURTH OF JULY"), times
("HALF PAST SIX", "TEN O'CLOCK"), commands ("TURN OFF THE KITCHEN LIGHTS"),
everyday statements and questions, and contractions ("DON'T", "IT'S").
Output is uppercase letters, spaces and apostrophes, 3 to 15 words.

Deterministic: a ``SentenceGenerator(seed)`` yields the same sentences on any
machine and Python version (it draws only from its own ``random.Random``).
"""

from __future__ import annotations

import random
import re

MIN_WORDS, MAX_WORDS = 3, 15
ALLOWED = re.compile(r"^[A-Z']+( [A-Z']+)*$")

# ---------------------------------------------------------------- numbers

ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
        "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
ORDINAL_ONES = ("ZEROTH FIRST SECOND THIRD FOURTH FIFTH SIXTH SEVENTH EIGHTH NINTH TENTH "
                "ELEVENTH TWELFTH THIRTEENTH FOURTEENTH FIFTEENTH SIXTEENTH SEVENTEENTH "
                "EIGHTEENTH NINETEENTH").split()
ORDINAL_TENS = "_ _ TWENTIETH THIRTIETH".split()


def spell_number(n: int) -> str:
    """0 <= n < 10000 in words: 23 -> TWENTY THREE, 105 -> ONE HUNDRED AND FIVE."""
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + (" " + ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return ONES[hundreds] + " HUNDRED" + (" AND " + spell_number(rest) if rest else "")
    thousands, rest = divmod(n, 1000)
    tail = "" if not rest else (" AND " if rest < 100 else " ") + spell_number(rest)
    return ONES[thousands] + " THOUSAND" + tail


def spell_ordinal(n: int) -> str:
    """1 <= n <= 31: 4 -> FOURTH, 21 -> TWENTY FIRST."""
    if n < 20:
        return ORDINAL_ONES[n]
    tens, ones = divmod(n, 10)
    return ORDINAL_TENS[tens] if not ones else TENS[tens] + " " + ORDINAL_ONES[ones]


def spell_year(year: int) -> str:
    """Years the way they are said: 1987 -> NINETEEN EIGHTY SEVEN, 2005 -> TWO THOUSAND AND FIVE."""
    if 2000 <= year < 2010:
        return spell_number(year)
    high, low = divmod(year, 100)
    return spell_number(high) + " " + ("HUNDRED" if low == 0 else
                                       "OH " + ONES[low] if low < 10 else spell_number(low))


# ---------------------------------------------------------------- word lists

MONTHS = ("JANUARY FEBRUARY MARCH APRIL MAY JUNE JULY AUGUST SEPTEMBER OCTOBER "
          "NOVEMBER DECEMBER").split()
DAYS = "MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY".split()
NAMES = ("ANNA DAVID MARIA JAMES SARAH PETER LUCY THOMAS EMMA JOHN KATE MICHAEL GRACE "
         "OLIVER ZOE JACK RACHEL DANIEL HELEN GEORGE ALICE HENRY").split()
RELATIVES = ("MOTHER FATHER SISTER BROTHER AUNT UNCLE GRANDMOTHER GRANDFATHER COUSIN "
             "NEIGHBOR FRIEND DOCTOR TEACHER BOSS DENTIST").split()
ROOMS = ("KITCHEN BEDROOM BATHROOM HALLWAY GARAGE OFFICE BASEMENT").split() + ["LIVING ROOM", "DINING ROOM"]
DEVICES = ("LIGHTS HEATING FAN TELEVISION RADIO OVEN HEATER SPEAKERS LAMP").split() + [
    "AIR CONDITIONING", "COFFEE MACHINE", "DISHWASHER", "WASHING MACHINE"]
PLACES = ("THE STATION|THE LIBRARY|THE MARKET|THE HOSPITAL|THE BEACH|SCHOOL|WORK|THE PARK|"
          "THE AIRPORT|THE BANK|THE MUSEUM|THE CINEMA|THE POST OFFICE|THE BAKERY|CHURCH|"
          "THE GYM|THE OFFICE|TOWN|THE CITY CENTER|THE ZOO").split("|")
FOODS = ("BREAD MILK EGGS CHEESE APPLES COFFEE TEA RICE SOUP PIZZA ORANGES BUTTER SUGAR "
         "CHICKEN POTATOES TOMATOES JUICE BANANAS PASTA YOGURT HONEY FISH CARROTS").split()
THINGS = ("KEYS|PHONE|WALLET|UMBRELLA|GLASSES|BAG|JACKET|BOOK|TICKETS|LAPTOP|NOTEBOOK|"
          "PASSPORT|BICYCLE|CAMERA|WATCH|SCARF|LETTER|MAP|SHOES|HAT").split("|")
ADJECTIVES = ("GOOD LOVELY QUIET BUSY COLD WARM LONG SHORT STRANGE BEAUTIFUL DIFFICULT EASY "
              "EXPENSIVE CHEAP NEW OLD SMALL BIG HAPPY TIRED FAMOUS EXCELLENT TERRIBLE "
              "WONDERFUL BORING SIMPLE DARK BRIGHT").split()
WEATHER = ("SUNNY|RAINY|WINDY|CLOUDY|FOGGY|FREEZING|HOT|HUMID|STORMY|SNOWING|RAINING").split("|")
# Time adverbs by tense, so that "WALKED ... NEXT WEEK" cannot happen.
NOW = "TODAY|RIGHT NOW|THIS MORNING|THIS AFTERNOON|THIS EVENING|AGAIN|AT THE MOMENT".split("|")
FUTURE = ("TOMORROW|TONIGHT|NEXT WEEK|LATER|SOON|THIS EVENING|AFTER LUNCH|IN TEN MINUTES|"
          "NEXT MONTH|THIS WEEKEND").split("|")
PAST = "YESTERDAY|LAST NIGHT|LAST WEEK|THIS MORNING|TWO DAYS AGO|LAST SUMMER|AN HOUR AGO".split("|")
ACTIVITIES = ("READ A BOOK|WATCH A MOVIE|COOK DINNER|CLEAN THE HOUSE|GO FOR A WALK|"
              "VISIT MY PARENTS|PLAY FOOTBALL|LEARN TO SWIM|WRITE A LETTER|PAINT THE FENCE|"
              "FIX THE BICYCLE|BAKE A CAKE|TAKE THE BUS|CATCH THE TRAIN|WATER THE PLANTS|"
              "WALK THE DOG|FEED THE CAT|CALL THE BANK|BOOK A TABLE|PACK MY BAG|"
              "FINISH THE REPORT|ANSWER THE EMAILS|PAY THE BILLS|JOIN THE MEETING").split("|")
GENRES = "JAZZ|CLASSICAL MUSIC|THE NEWS|SOME ROCK|THE RADIO|MY PLAYLIST|A PODCAST|SOME BLUES".split("|")

# Subjects with the forms of the verbs that agree with them:
# (subject, contracted be, do-not, be, is third person singular)
SUBJECTS = [
    ("I", "I'M", "DON'T", "AM", False),
    ("YOU", "YOU'RE", "DON'T", "ARE", False),
    ("WE", "WE'RE", "DON'T", "ARE", False),
    ("THEY", "THEY'RE", "DON'T", "ARE", False),
    ("HE", "HE'S", "DOESN'T", "IS", True),
    ("SHE", "SHE'S", "DOESN'T", "IS", True),
]
WILL = {"I": "I'LL", "YOU": "YOU'LL", "WE": "WE'LL", "THEY": "THEY'LL", "HE": "HE'LL", "SHE": "SHE'LL"}


class SentenceGenerator:
    """Seeded sentence source: ``SentenceGenerator(0).sentence()`` is always the same."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        # (weight, rule): commands and statements dominate, as in real use.
        self.rules = [
            (5, self.command), (5, self.statement), (3, self.question), (2, self.date),
            (2, self.time_sentence), (2, self.number_sentence), (2, self.contraction),
        ]

    def sentence(self) -> str:
        weights = [w for w, _ in self.rules]
        while True:  # rules are short; a retry is rare and keeps every rule simple
            rule = self.rng.choices([r for _, r in self.rules], weights)[0]
            text = " ".join(rule().split())
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                assert ALLOWED.match(text), text
                return text

    def sentences(self, n: int) -> list[str]:
        return [self.sentence() for _ in range(n)]

    # ---- building blocks

    def pick(self, items):
        return self.rng.choice(items)

    def maybe(self, text: str, p: float = 0.5) -> str:
        return text if self.rng.random() < p else ""

    def person(self) -> str:
        r = self.rng.random()
        if r < 0.4:
            return self.pick(NAMES)
        if r < 0.7:
            return "MY " + self.pick(RELATIVES)
        if r < 0.85:
            return self.pick(NAMES) + "'S " + self.pick(RELATIVES)  # possessive apostrophe
        return "THE " + self.pick(RELATIVES)

    def when(self, tense: list[str]) -> str:
        if tense is not NOW and self.rng.random() < 0.2:
            return "ON " + self.pick(DAYS)
        return self.pick(tense)

    def number(self) -> str:
        r = self.rng.random()
        n = self.rng.randint(0, 20) if r < 0.4 else self.rng.randint(21, 99) if r < 0.8 else self.rng.randint(100, 9999)
        return spell_number(n)

    def clock(self) -> str:
        hour = self.rng.randint(1, 12)
        minute = self.rng.choice([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, self.rng.randint(1, 59)])
        h, nxt = spell_number(hour), spell_number(hour % 12 + 1)
        style = self.rng.random()
        if minute == 0:
            text = h + self.pick([" O'CLOCK", "", " SHARP"])
        elif style < 0.5:
            text = h + " " + ("OH " + ONES[minute] if minute < 10 else spell_number(minute))
        elif minute == 15:
            text = "QUARTER PAST " + h
        elif minute == 30:
            text = "HALF PAST " + h
        elif minute == 45:
            text = "QUARTER TO " + nxt
        elif minute < 30:
            text = spell_number(minute) + (" MINUTES" if minute % 5 else "") + " PAST " + h
        else:
            text = spell_number(60 - minute) + (" MINUTES" if minute % 5 else "") + " TO " + nxt
        # No "A M" / "P M": a TTS reads the letter A as the article "UH".
        return text + self.maybe(self.pick([" IN THE MORNING", " IN THE AFTERNOON", " IN THE EVENING",
                                            " AT NIGHT"]), 0.3)

    def day_of_month(self) -> str:
        month, day = self.pick(MONTHS), spell_ordinal(self.rng.randint(1, 28))
        return self.pick([f"THE {day} OF {month}", f"{month} {day}", f"{month} THE {day}"])

    # ---- rules

    def command(self) -> str:
        room, device = self.pick(ROOMS), self.pick(DEVICES)
        templates = [
            lambda: f"TURN {self.pick(['ON', 'OFF'])} THE {self.maybe(room + ' ')}{device}",
            lambda: f"SWITCH {self.pick(['ON', 'OFF'])} THE {device} IN THE {room}",
            lambda: f"SET A TIMER FOR {self.number()} MINUTES",
            lambda: f"SET AN ALARM FOR {self.clock()}",
            lambda: f"PLAY {self.pick(GENRES)} IN THE {room}",
            lambda: f"CALL {self.person()}{self.maybe(' ' + self.when(FUTURE), 0.3)}",
            lambda: f"REMIND ME TO {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"ADD {self.pick(FOODS)} AND {self.pick(FOODS)} TO THE SHOPPING LIST",
            lambda: f"{self.pick(['TURN UP', 'TURN DOWN'])} THE VOLUME{self.maybe(' PLEASE')}",
            lambda: f"SET THE TEMPERATURE TO {spell_number(self.rng.randint(15, 28))} DEGREES",
            lambda: f"{self.pick(['PLEASE ', 'COULD YOU ', ''])}DIM THE LIGHTS IN THE {room}",
            lambda: f"DON'T FORGET TO {self.pick(ACTIVITIES)}",
            lambda: f"LET'S {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"SEND A MESSAGE TO {self.person()} SAYING I'LL BE LATE",
            lambda: f"OPEN THE {self.pick(['DOOR', 'WINDOW', 'GARAGE', 'CURTAINS', 'BLINDS'])}",
            lambda: f"WHAT'S THE WEATHER LIKE IN {self.pick(['LONDON', 'PARIS', 'BOSTON', 'MADRID', 'TOKYO', 'CHICAGO'])}",
        ]
        return self.pick(templates)()

    def statement(self) -> str:
        subj, be_c, dont, be, third = self.pick(SUBJECTS)
        verb_s = "S" if third else ""
        templates = [
            lambda: f"{be_c} GOING TO {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"{WILL[subj]} MEET YOU AT {self.pick(PLACES)} {self.when(FUTURE)}",
            lambda: f"{subj} {dont} LIKE {self.pick(FOODS)} VERY MUCH",
            lambda: f"{subj} LEFT THE {self.pick(THINGS)} AT {self.pick(PLACES)}{self.maybe(' ' + self.when(PAST))}",
            lambda: f"{self.person()} BOUGHT {self.number()} {self.pick(FOODS)} AT THE MARKET",
            lambda: f"{self.person()} WORKS AT {self.pick(PLACES)} NEAR THE {self.pick(['RIVER', 'BRIDGE', 'CHURCH', 'CORNER', 'PARK'])}",
            lambda: f"THE {self.pick(['FILM', 'BOOK', 'MEETING', 'TRIP', 'DINNER', 'LESSON', 'CONCERT'])} WAS {self.maybe('VERY ')}{self.pick(ADJECTIVES)}",
            lambda: f"IT'S {self.pick(WEATHER)} {self.when(NOW)}",
            lambda: f"{subj} NEED{verb_s} TO {self.pick(ACTIVITIES)} BEFORE {self.clock()}",
            lambda: f"{subj} {be} {self.maybe('VERY ')}{self.pick(['HAPPY', 'TIRED', 'BUSY', 'HUNGRY', 'LATE', 'READY', 'SORRY'])} {self.when(NOW)}",
            lambda: f"{self.person()} HAS {self.number()} {self.pick(['BOOKS', 'CATS', 'FRIENDS', 'BROTHERS', 'PLANTS', 'CHAIRS'])}",
            lambda: f"WE TOOK THE {self.pick(['TRAIN', 'BUS', 'CAR', 'BOAT', 'PLANE'])} TO {self.pick(PLACES)} {self.when(PAST)}",
            lambda: f"THE {self.pick(ROOMS)} IS {self.pick(['TOO COLD', 'TOO WARM', 'VERY DARK', 'QUIET', 'A MESS', 'READY'])}",
            lambda: f"THERE ARE {self.number()} PEOPLE WAITING AT {self.pick(PLACES)}",
        ]
        return self.pick(templates)()

    def question(self) -> str:
        templates = [
            lambda: f"WHAT TIME DOES THE {self.pick(['TRAIN', 'BUS', 'FERRY', 'PLANE'])} {self.pick(['LEAVE', 'ARRIVE'])}",
            lambda: f"WHAT TIME DOES THE {self.pick(['SHOP', 'MUSEUM', 'BANK', 'LIBRARY', 'BAKERY'])} {self.pick(['OPEN', 'CLOSE'])}",
            lambda: f"WHERE DID YOU PUT MY {self.pick(THINGS)}",
            lambda: f"HAVE YOU SEEN {self.person()} {self.pick(['TODAY', 'THIS MORNING', 'RECENTLY', 'LATELY'])}",
            lambda: f"HOW MUCH DOES THE {self.pick(THINGS)} COST",
            lambda: f"CAN YOU {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"IS IT {self.pick(WEATHER)} IN {self.pick(['LONDON', 'PARIS', 'THE CITY', 'THE MOUNTAINS'])}",
            lambda: f"WHY DON'T WE {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"WHAT'S ON THE CALENDAR FOR {self.pick(DAYS)}",
            lambda: f"WHO'S COMING TO DINNER ON {self.pick(DAYS)}",
            lambda: f"HOW FAR IS IT TO {self.pick(PLACES)}",
            lambda: f"ISN'T IT {self.pick(ADJECTIVES)} TODAY",
        ]
        return self.pick(templates)()

    def date(self) -> str:
        day = self.day_of_month()
        templates = [
            lambda: f"MY BIRTHDAY IS ON {day}",
            lambda: f"THE MEETING IS ON {self.pick(DAYS)} {day}",
            lambda: f"WE'RE LEAVING ON {day}",
            lambda: f"IT'S THE {spell_ordinal(self.rng.randint(1, 31))} TODAY",
            lambda: f"SHE WAS BORN ON {day} {spell_year(self.rng.randint(1930, 2024))}",
            lambda: f"THE SHOP CLOSES FOR THE HOLIDAY ON {day}",
            lambda: f"REMIND ME ABOUT THE {self.pick(['DENTIST', 'MEETING', 'PARTY', 'TRIP'])} ON {day}",
            lambda: "THE FOURTH OF JULY IS A HOLIDAY",
            lambda: f"WHAT DAY IS {day} THIS YEAR",
        ]
        return self.pick(templates)()

    def time_sentence(self) -> str:
        t = self.clock()
        templates = [
            lambda: f"THE TRAIN LEAVES AT {t}",
            lambda: f"WAKE ME UP AT {t}",
            lambda: f"IT'S {t}",
            lambda: f"LET'S MEET AT {t} {self.maybe('ON ' + self.pick(DAYS))}",
            lambda: f"{self.person()} GETS HOME AT {t}",
            lambda: f"THE SHOP OPENS AT {t} {self.maybe('EVERY DAY')}",
            lambda: f"I'LL CALL YOU BACK AT {t}",
        ]
        return self.pick(templates)()

    def number_sentence(self) -> str:
        n = self.number()
        templates = [
            lambda: f"THE ROOM NUMBER IS {n}",
            lambda: f"I NEED {n} {self.pick(FOODS)} FOR THE RECIPE",
            lambda: f"IT COSTS {n} DOLLARS{self.maybe(' AND ' + spell_number(self.rng.randint(1, 99)) + ' CENTS')}",
            lambda: f"THE BUS NUMBER {n} GOES TO {self.pick(PLACES)}",
            lambda: f"{self.pick(['WE', 'THEY'])} WALKED {n} MILES {self.when(PAST)}",
            lambda: f"MY PHONE NUMBER ENDS IN {' '.join(ONES[self.rng.randint(0, 9)] for _ in range(4))}",
            lambda: f"{n} PLUS {spell_number(self.rng.randint(0, 99))} IS A {self.pick(['BIG', 'SMALL'])} NUMBER",
        ]
        return self.pick(templates)()

    def contraction(self) -> str:
        templates = [
            lambda: "I DON'T KNOW WHERE IT IS",
            lambda: f"IT'S {self.pick(ADJECTIVES)} {self.when(NOW)}",
            lambda: f"THAT'S {self.maybe('REALLY ')}{self.pick(ADJECTIVES)}",
            lambda: f"WE CAN'T {self.pick(ACTIVITIES)} {self.when(FUTURE)}",
            lambda: f"I WON'T BE HOME UNTIL {self.clock()}",
            lambda: f"YOU'RE RIGHT IT ISN'T {self.pick(ADJECTIVES)}",
            lambda: f"THEY'VE ALREADY GONE TO {self.pick(PLACES)}",
            lambda: f"I'VE LOST MY {self.pick(THINGS)} AGAIN",
            lambda: f"SHE'D LIKE SOME {self.pick(FOODS)} {self.maybe('PLEASE')}",
            lambda: f"{self.person()} DOESN'T WANT TO {self.pick(ACTIVITIES)}",
            lambda: f"WE SHOULDN'T BE LATE FOR THE {self.pick(['TRAIN', 'MEETING', 'FILM', 'WEDDING'])}",
            lambda: f"IT WASN'T {self.pick(ADJECTIVES)} AT ALL",
        ]
        return self.pick(templates)()


def vocabulary(n_sentences: int = 5000, seed: int = 0) -> set[str]:
    """The words a run of the generator uses: for tests and for sizing a tokenizer."""
    gen = SentenceGenerator(seed)
    return {w for _ in range(n_sentences) for w in gen.sentence().split()}
